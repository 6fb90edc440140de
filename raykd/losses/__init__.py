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

Users add their own loss by decorating a function with ``@register_loss("name")`` before the run
starts.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from raykd.errors import UserError
from raykd.registry import Registry

LOSSES: Registry = Registry("loss")
register_loss = LOSSES.register

# Which outputs each loss needs from the teacher (so the engine can skip computing / caching the rest).
NEEDS: dict[str, set[str]] = {}


def needs(name: str, *keys: str) -> None:
    NEEDS[name] = set(keys)


class _FnLoss(nn.Module):
    def __init__(self, fn: Callable, params: dict):
        super().__init__()
        self.fn, self.params = fn, params

    def forward(self, student_out, teacher_out, batch):
        return self.fn(student_out, teacher_out, batch, **self.params)


def build_one(name: str, params: dict, context: dict | None = None, field: str | None = None) -> nn.Module:
    obj = LOSSES.get(name, field)
    context = context or {}
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        try:
            return obj(context=context, **params)
        except TypeError as e:
            raise UserError(f"{field or name}: bad parameters for loss {name!r}: {e}") from None
    sig = inspect.signature(obj)
    accepts = set(list(sig.parameters)[3:])
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = set(params) - accepts
    if unknown and not var_kw:
        raise UserError(f"{field or name}: loss {name!r} takes no parameter {sorted(unknown)[0]!r}; it takes {sorted(accepts - {'kwargs'}) or 'none'}")
    return _FnLoss(obj, params)


class WeightedLoss(nn.Module):
    """sum_k weight_k * loss_k; ``forward`` returns (total, {name: value})."""

    def __init__(self, specs: list[dict], context: dict | None = None):
        super().__init__()
        self.names: list[str] = []
        self.base_names: list[str] = []
        self.weights: list[float] = []
        self.parts = nn.ModuleList()
        seen: dict[str, int] = {}
        for i, spec in enumerate(specs):
            spec = dict(spec)
            name = spec.pop("name")
            weight = float(spec.pop("weight", 1.0))
            self.parts.append(build_one(name, spec, context, field=f"losses[{i}].name"))
            seen[name] = seen.get(name, 0) + 1
            self.names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
            self.base_names.append(name)
            self.weights.append(weight)

    @property
    def teacher_needs(self) -> set[str]:
        out: set[str] = set()
        for n in self.base_names:
            out |= NEEDS.get(n, set())
        return out

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


# Register the built-in losses.
from raykd.losses import kd as _kd  # noqa: E402,F401
from raykd.losses import ckd as _ckd  # noqa: E402,F401
from raykd.losses import smoothing as _smoothing  # noqa: E402,F401
