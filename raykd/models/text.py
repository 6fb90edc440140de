"""Text classifiers over sequences of embedding vectors (the embedding table lives outside the model).

``textcnn`` takes a float batch ``[B, L, D]`` of token embeddings (for example rows of the frozen
MiniLM table) rather than token ids, so it can be trained on synthetic sentences that live anywhere
in embedding space (dataset distillation) as well as on embedded real sentences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raykd.models import register_model


class TextCNN(nn.Module):
    """Kim (2014)-style sentence CNN: parallel 1-d convolutions of several widths over the sequence,
    ReLU, max over time, dropout, linear classifier."""

    def __init__(self, embed_dim: int = 384, channels: int = 64, kernel_sizes: tuple[int, ...] = (3, 4, 5),
                 num_classes: int = 2, dropout: float = 0.0):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k, padding=k // 2) for k in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * len(kernel_sizes), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [B, L, D] embeddings -> [B, num_classes] logits."""
        h = x.transpose(1, 2)  # [B, D, L]: channels first for Conv1d
        pooled = [F.relu(conv(h)).amax(dim=2) for conv in self.convs]
        return self.fc(self.dropout(torch.cat(pooled, dim=1)))


@register_model("textcnn")
def textcnn(embed_dim: int = 384, channels: int = 64, kernel_sizes: list[int] = (3, 4, 5), num_classes: int = 2,
            dropout: float = 0.0) -> nn.Module:
    if not kernel_sizes or any(int(k) < 1 for k in kernel_sizes):
        raise TypeError(f"kernel_sizes must be a non-empty list of positive ints, got {kernel_sizes}")
    if int(channels) < 1 or int(embed_dim) < 1:
        raise TypeError("channels and embed_dim must be positive")
    return TextCNN(int(embed_dim), int(channels), tuple(int(k) for k in kernel_sizes), num_classes, float(dropout))
