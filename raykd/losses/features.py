"""Feature losses between any teacher module and any student module, named by dotted path.

``hidden_mse``, ``attention_kl`` and the relation losses (``wr_*``, ``ltr_*``) take, instead of a
``layer_map`` over a transformers model's hidden states, ``teacher_module`` and ``student_module``:
one path each, or two lists paired in order. The engine captures those modules' outputs with forward
hooks (:mod:`raykd.models.features`), so any ``nn.Module`` works (a timm CNN, a DistilBERT student of
a BERT teacher). Shapes per example: ``[L, D]`` token features, ``[C, H, W]`` feature maps, ``[D]``
vectors. A feature map is read as ``H*W`` positions of ``C`` channels where a loss relates positions.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from raykd.losses import LayerMap, LossParams
from raykd.schema import FieldError

Paths = str | list[str]


def as_list(paths: Paths | None) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths or [])


class FeatureParams(LossParams):
    """Which features a loss compares: a ``layer_map`` of hidden states, or modules by path."""

    layer_map: LayerMap | None = Field(None, description="[teacher_layer, student_layer] pairs of hidden states "
                                       "(0 = embeddings; attention maps: 1..N); default: uniform layer skipping")
    teacher_module: Paths | None = Field(None, description="teacher module(s) by dotted path (forward hooks), "
                                         "paired in order with student_module")
    student_module: Paths | None = Field(None, description="student module(s) by dotted path")

    @model_validator(mode="after")
    def _paired(self):
        t, s = as_list(self.teacher_module), as_list(self.student_module)
        if bool(t) != bool(s):
            missing = "student_module" if t else "teacher_module"
            raise FieldError(missing, "give teacher_module and student_module together (one path each, or lists paired in order)")
        if len(t) != len(s):
            raise FieldError("student_module", f"{len(s)} student modules for {len(t)} teacher modules; pair them one to one")
        if t and self.layer_map is not None:
            raise FieldError("layer_map", "give either layer_map (hidden states) or teacher_module/student_module, not both")
        return self

    @property
    def module_pairs(self) -> list[tuple[str, str]]:
        return module_pairs(self.teacher_module, self.student_module)


def module_pairs(teacher_module: Paths | None, student_module: Paths | None) -> list[tuple[str, str]]:
    """(teacher path, student path) pairs of a loss's parameters; empty when it uses layer maps."""
    return list(zip(as_list(teacher_module), as_list(student_module)))


def tokens(x):
    """A feature as a sequence of positions: [B, L, D] as it is, [B, C, H, W] as [B, H*W, C]."""
    if x.dim() == 3:
        return x
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    raise RuntimeError(f"a relation loss needs token or feature-map outputs ([B, L, D] or [B, C, H, W]); "
                       f"the module gave shape {list(x.shape)}")


def match_positions(xs, xt):
    """Student and teacher features with the same positions: feature maps of different sizes are
    average-pooled to the smaller; token sequences must have equal lengths (one tokenisation)."""
    import torch.nn.functional as F

    if xs.dim() == 4 and xt.dim() == 4 and xs.shape[-2:] != xt.shape[-2:]:
        size = (min(xs.shape[-2], xt.shape[-2]), min(xs.shape[-1], xt.shape[-1]))
        xs, xt = F.adaptive_avg_pool2d(xs, size), F.adaptive_avg_pool2d(xt, size)
    elif xs.dim() == 3 and xt.dim() == 3 and xs.shape[1] != xt.shape[1]:
        raise RuntimeError(f"student and teacher features have {xs.shape[1]} and {xt.shape[1]} positions; "
                           "token features need one tokenisation")
    return xs, xt


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    for key in ("last_hidden_state", "hidden_states"):  # ModelOutput-like objects
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


def attention_probs(out) -> torch.Tensor | None:
    """The attention probabilities an attention module returned: the first 4-d tensor after its output."""
    if isinstance(out, (tuple, list)):
        return next((o for o in out[1:] if isinstance(o, torch.Tensor) and o.dim() == 4), None)
    return None


def tensor_of(output, attention: bool = False) -> torch.Tensor:
    """The tensor a loss reads from a captured output: the module's output, or its attention probabilities."""
    t = attention_probs(output) if attention else _first_tensor(output)
    if t is None:
        what = "attention probabilities ([B, heads, L, L], returned with eager attention)" if attention else "a tensor"
        raise RuntimeError(f"the module returned no {what}")
    return t
