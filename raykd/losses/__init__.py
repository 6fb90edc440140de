"""Loss registry.

A loss is registered by name and is either

* a function ``f(student_out, teacher_out, batch, **params) -> Tensor`` (stateless), or
* an ``nn.Module`` subclass built as ``cls(context=..., **params)`` whose
  ``forward(student_out, teacher_out, batch)`` returns a scalar (for losses with learnable parts,
  e.g. the projection of hidden-state MSE when widths differ).

``student_out``/``teacher_out`` are dicts with ``logits`` and, where a loss needs them,
``hidden_states`` (tuple of [B, L, D] tensors, embedding output first) and ``attentions`` (tuple of
[B, H, L, L]); ``teacher_out`` is None for teacher-free losses. ``batch`` holds ``label`` and, for
text, ``attention_mask``. A config composes weighted sums::

    losses:
      - {name: kd, weight: 1.0, temperature: 4.0}
      - {name: ce, weight: 0.1}

Every loss declares its parameters as a pydantic model registered with it
(``@register_loss("kd", params=KDParams)``), so a config's loss entries are validated when the config
is (unknown or bad parameters fail ``raykd check``), and :func:`build_one` builds the loss from the
same validated parameters. Users add their own loss by decorating a function with
``@register_loss("name")`` before the run starts; without ``params=`` its parameter model is derived
from its signature (the parameters after ``(student_out, teacher_out, batch)`` for a function, after
``context`` for a module; annotations as types, defaults as defaults, ``**kwargs``: any further
parameter is accepted).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from pydantic import ValidationError
from torch import nn

from raykd.errors import UserError
from raykd.registry import (LOSSES, NEEDS, PARAMS, LayerMap, LossParams, check_loss_params, loss_params,  # noqa: F401
                            loss_reads, register_loss)
from raykd.schema import FieldError


def needs(name: str, *keys: str) -> None:
    """Declare the teacher outputs loss ``name`` reads (also ``register_loss(..., needs=...)``)."""
    NEEDS[name] = set(keys)


class _FnLoss(nn.Module):
    def __init__(self, fn: Callable, params: dict):
        super().__init__()
        self.fn, self.params = fn, params

    def forward(self, student_out, teacher_out, batch):
        return self.fn(student_out, teacher_out, batch, **self.params)


def build_one(name: str, params: dict, context: dict | None = None, field: str | None = None) -> nn.Module:
    """Build loss ``name`` from its validated parameters (``field``: where the entry is, for messages)."""
    obj = LOSSES.get(name, field)
    try:
        kwargs = check_loss_params(name, params)
    except FieldError as e:
        where = ".".join(w for w in (field, e.where) if w) or f"loss {name!r}"
        raise UserError(f"{where}: {e}") from None
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        try:
            return obj(context=context or {}, **kwargs)
        except TypeError as e:
            raise UserError(f"{field or name}: bad parameters for loss {name!r}: {e}") from None
    return _FnLoss(obj, kwargs)


class WeightedLoss(nn.Module):
    """sum_k weight_k * loss_k; ``forward`` returns (total, {name: value}).

    ``specs`` are loss entries of a config (``{name, weight, **params}``), validated as a config's are."""

    def __init__(self, specs: list[dict], context: dict | None = None):
        super().__init__()
        self.names: list[str] = []
        self.base_names: list[str] = []
        self.weights: list[float] = []
        self.parts = nn.ModuleList()
        seen: dict[str, int] = {}
        self.reads: list[set[str]] = []  # what each loss reads from the teacher
        for i, raw in enumerate(specs):
            spec = _loss_spec(raw, f"losses.{i}")
            self.reads.append(loss_reads(spec.name, spec.params))
            self.parts.append(build_one(spec.name, spec.params, context, field=f"losses.{i}"))
            seen[spec.name] = seen.get(spec.name, 0) + 1
            self.names.append(spec.name if seen[spec.name] == 1 else f"{spec.name}_{seen[spec.name]}")
            self.base_names.append(spec.name)
            self.weights.append(spec.weight)

    @property
    def teacher_needs(self) -> set[str]:
        return set().union(*self.reads)

    def forward(self, student_out: dict, teacher_out: dict | None, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        total = 0.0
        logs: dict[str, float] = {}
        for name, w, part in zip(self.names, self.weights, self.parts):
            v = part(student_out, teacher_out, batch)
            logs[name] = float(v.detach())
            total = total + w * v
        return total, logs


def loss_names() -> list[str]:
    return LOSSES.names()


def _loss_spec(raw: dict, field: str) -> "LossSpec":
    from raykd.config import LossSpec, _format_error

    try:
        return LossSpec.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_error(err, LossSpec, field)) from None


# Register the built-in losses.
from raykd.losses import kd as _kd  # noqa: E402,F401
from raykd.losses import ckd as _ckd  # noqa: E402,F401
from raykd.losses import smoothing as _smoothing  # noqa: E402,F401
