"""Any timm (or torchvision) image classifier as a teacher or a student: ``name: timm`` / ``torchvision``.

``args``: ``arch`` (any name ``timm.list_models()`` knows, or a ``torchvision.models`` builder), and
``weights``: a local file of trained weights (safetensors, or a PyTorch checkpoint read with
``weights_only=True``; nothing is fetched). The number of classes and input channels come from the
data (``num_classes``, ``input_shape``). Weights whose classifier fits the data's classes make a trained
model (a teacher is then not trained again); weights of another head (e.g. ImageNet's 1,000 classes)
are loaded without it, and the head starts fresh. Any further key goes to ``timm.create_model``
(``drop_rate``, ``global_pool``, ...).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from raykd.errors import UserError
from raykd.models import register_model


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a ``weights_only`` PyTorch checkpoint (``state_dict``/``model``
    entries of a training checkpoint are unwrapped, ``module.`` prefixes of DDP dropped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"weights: no file {path!r}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle errors of every kind: one message
            raise UserError(f"weights: {path!r} is neither safetensors nor a weights-only PyTorch checkpoint ({e})") from None
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights: {path!r} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_trained(model: nn.Module, path: str) -> nn.Module:
    """Load ``path`` into ``model``; tensors whose shapes differ (a head for other classes, a stem for
    other channels) stay fresh. Sets ``model.raykd_trained_head`` (every tensor loaded) and refuses
    weights that share almost nothing with the architecture."""
    state = read_state_dict(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fits) < 0.5 * len(own):
        raise UserError(f"weights: {path!r} matches {len(fits)} of the model's {len(own)} tensors; "
                        "are they weights of this arch?")
    model.load_state_dict(fits, strict=False)
    model.raykd_trained_head = len(fits) == len(own)
    return model


def _channels(input_shape, in_chans):
    if in_chans is not None:
        return int(in_chans)
    return int(input_shape[0]) if input_shape else 3


def _timm_arch(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise TypeError(f"timm has no model {arch!r}" + (f"; close: {', '.join(close)}" if close else ""))


@register_model("timm")
def timm_model(num_classes: int = 10, arch: str = "resnet18", weights: str | None = None,
               input_shape: list[int] | None = None, in_chans: int | None = None, **kwargs) -> nn.Module:
    """``timm.create_model(arch, num_classes=..., in_chans=...)``, with trained weights from ``weights``."""
    import timm

    _timm_arch(arch)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                  in_chans=_channels(input_shape, in_chans), **kwargs)
    except TypeError as e:
        raise TypeError(f"timm model {arch!r}: {e}") from None
    model.raykd_trained_head = False
    return load_trained(model, weights) if weights else model


@register_model("torchvision")
def torchvision_model(num_classes: int = 10, arch: str = "resnet18", weights: str | None = None,
                      input_shape: list[int] | None = None, **kwargs) -> nn.Module:
    """A ``torchvision.models`` classifier by builder name; a first convolution for other channels
    than 3 is replaced (same kernel, stride and padding)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        raise TypeError(f"torchvision has no classifier {arch!r}" + (f"; close: {', '.join(close)}" if close else ""))
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    c = _channels(input_shape, None)
    if c != 3:
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        parent, attr = _parent_of(model, first)
        setattr(parent, attr, nn.Conv2d(c, first.out_channels, first.kernel_size, first.stride, first.padding,
                                        bias=first.bias is not None))
    model.raykd_trained_head = False
    return load_trained(model, weights) if weights else model


def _parent_of(model: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    for name, m in model.named_modules():
        if m is child:
            parent, _, attr = name.rpartition(".")
            return (model.get_submodule(parent) if parent else model), attr
    raise ValueError("module not in model")
