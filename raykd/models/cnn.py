"""Convolutional image classifiers: LeNet-5 and a family of widths/depths for students."""

from __future__ import annotations

import torch
from torch import nn

from raykd.models import register_model


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 28x28 inputs: conv6-pool-conv16-pool-fc120-fc84-fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ConvNet(nn.Module):
    """``len(widths)`` blocks of conv3x3-BN-ReLU-maxpool2, then the feature map is flattened
    (``pool="flatten"``, keeps spatial layout) or globally averaged (``pool="avg"``, fewer
    parameters), an optional hidden layer and the classifier. ``widths=[32, 64], hidden=128`` is a
    strong MNIST teacher; ``widths=[4, 8], hidden=16`` a tiny student."""

    def __init__(self, widths: list[int] = (32, 64), hidden: int = 128, num_classes: int = 10,
                 in_channels: int = 1, dropout: float = 0.0, pool: str = "flatten", image_size: int = 28):
        super().__init__()
        layers: list[nn.Module] = []
        c, side = in_channels, image_size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c, side = w, side // 2
        if pool == "avg":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif pool == "flatten":
            layers += [nn.Flatten()]
            c = c * side * side
        else:
            raise TypeError(f"pool must be 'flatten' or 'avg', got {pool!r}")
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = []
        if hidden:
            head += [nn.Linear(c, hidden), nn.ReLU()]
            c = hidden
        if dropout:
            head.append(nn.Dropout(dropout))
        self.classifier = nn.Sequential(*head, nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels)


@register_model("cnn")
def cnn(widths: list[int] = (32, 64), hidden: int = 128, num_classes: int = 10, in_channels: int = 1,
        dropout: float = 0.0, pool: str = "flatten", image_size: int = 28) -> nn.Module:
    if not widths or any(int(w) < 1 for w in widths):
        raise TypeError(f"widths must be a non-empty list of positive ints, got {widths}")
    return ConvNet(list(widths), int(hidden), num_classes, in_channels, dropout, pool, image_size)


@register_model("mlp")
def mlp(hidden: list[int] = (256,), num_classes: int = 10, in_features: int = 784) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    c = in_features
    for h in hidden:
        layers += [nn.Linear(c, h), nn.ReLU()]
        c = h
    return nn.Sequential(*layers, nn.Linear(c, num_classes))
