"""Classic distillation losses: cross-entropy, logit KD, hidden-state MSE, attention-map KL."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from raykd.losses import LossParams, needs, register_loss
from raykd.losses.features import FeatureParams, match_positions, module_pairs, tensor_of


class KDParams(LossParams):
    temperature: float = Field(4.0, gt=0, description="softmax temperature T of both models' logits")


LayerMapParams = FeatureParams  # layer_map, or teacher_module/student_module (see raykd.losses.features)


@register_loss("ce", params=LossParams)
def ce(student_out, teacher_out, batch):
    """Cross-entropy with the hard labels: -log p_s(y)."""
    return F.cross_entropy(student_out["logits"], batch["label"])


@register_loss("kd", params=KDParams)
def kd(student_out, teacher_out, batch, temperature: float = 4.0):
    """Logit KD (Hinton et al. 2015): T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch-mean."""
    T = float(temperature)
    log_p_s = F.log_softmax(student_out["logits"] / T, dim=-1)
    log_p_t = F.log_softmax(teacher_out["logits"].float() / T, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * T * T


needs("kd", "logits")


def _mask(batch, like: torch.Tensor) -> torch.Tensor:
    m = batch.get("attention_mask")
    if m is None:
        return torch.ones(like.shape[:2], dtype=like.dtype, device=like.device)
    return m.to(like.dtype)


def uniform_layer_map(n_teacher: int, n_student: int) -> list[tuple[int, int]]:
    """(teacher_layer, student_layer) pairs, embedding output = 0, teacher layers skipped uniformly.

    A 6-layer teacher and a 3-layer student: [(0,0), (2,1), (4,2), (6,3)].
    """
    if n_student > n_teacher:
        return [(0, 0)] + [(min(n_teacher, round(j * n_teacher / n_student)), j) for j in range(1, n_student + 1)]
    step = n_teacher / n_student
    return [(0, 0)] + [(round(j * step), j) for j in range(1, n_student + 1)]


@register_loss("hidden_mse", params=LayerMapParams)
class HiddenMSE(nn.Module):
    """TinyBERT-style hidden-state MSE over matched layers (or modules), MSE(proj(h_s), h_t), padding masked.

    A learned projection maps student width to teacher width when they differ: a linear map of token
    features, a 1x1 convolution of feature maps (whose sizes are pooled to the smaller one).
    """

    def __init__(self, context: dict, layer_map: list[list[int]] | None = None, teacher_module=None, student_module=None):
        super().__init__()
        self.layer_map = [tuple(p) for p in layer_map] if layer_map else None
        self.modules_ = module_pairs(teacher_module, student_module)
        if self.modules_:
            shapes = context.get("feature_shapes") or {}
            self.projs = nn.ModuleList(_projection(shapes.get("student", {}).get(s), shapes.get("teacher", {}).get(t))
                                       for t, s in self.modules_)
        else:
            ds, dt = context.get("student_hidden"), context.get("teacher_hidden")
            self.proj = nn.Linear(ds, dt, bias=False) if ds and dt and ds != dt else nn.Identity()

    def forward(self, student_out, teacher_out, batch):
        if self.modules_:
            fs, ft = student_out["features"], teacher_out["features"]
            pairs = [(tensor_of(ft[t]), tensor_of(fs[s]), proj) for (t, s), proj in zip(self.modules_, self.projs)]
            return sum(_mse(proj(s), t, batch) for t, s, proj in pairs) / len(pairs)
        hs, ht = student_out["hidden_states"], teacher_out["hidden_states"]
        pairs = self.layer_map or uniform_layer_map(len(ht) - 1, len(hs) - 1)
        return sum(_mse(self.proj(hs[s_i]), ht[t_i], batch) for t_i, s_i in pairs) / len(pairs)


def _projection(s_shape: tuple | None, t_shape: tuple | None) -> nn.Module:
    """Student feature -> teacher width: identity when equal, linear over the last axis of vectors and
    token features, a 1x1 convolution over the channels of feature maps."""
    if s_shape is None or t_shape is None:
        raise RuntimeError("hidden_mse: the shapes of the hooked modules are unknown (the teacher must run in the "
                           "training workers: engine.teacher_placement: colocated, engine.teacher_cache: false)")
    if len(s_shape) != len(t_shape):
        raise RuntimeError(f"hidden_mse: student feature of shape {list(s_shape)} and teacher feature of shape "
                           f"{list(t_shape)} are not the same kind; pair token features with token features, maps with maps")
    if len(s_shape) == 3:  # [C, H, W]
        return nn.Identity() if s_shape[0] == t_shape[0] else nn.Conv2d(s_shape[0], t_shape[0], 1, bias=False)
    return nn.Identity() if s_shape[-1] == t_shape[-1] else nn.Linear(s_shape[-1], t_shape[-1], bias=False)


def _mse(s: torch.Tensor, t: torch.Tensor, batch) -> torch.Tensor:
    """Mean squared error per feature element, padding positions of token features left out."""
    s, t = match_positions(s, t.to(s.dtype))
    if s.dim() == 3:
        m = _mask(batch, s).unsqueeze(-1) if batch.get("attention_mask") is not None and \
            batch["attention_mask"].shape[1] == s.shape[1] else torch.ones_like(s[..., :1])
        return ((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1]).clamp_min(1.0)
    return F.mse_loss(s, t)


needs("hidden_mse", "hidden_states")


@register_loss("attention_kl", params=LayerMapParams)
def attention_kl(student_out, teacher_out, batch, layer_map: list[list[int]] | None = None, teacher_module=None,
                 student_module=None):
    """KL(A_t || A_s) of attention maps over matched layers (heads averaged when counts differ).

    Attention layers are 1-indexed like hidden states (layer l's map is attentions[l-1]); with module
    paths, the attention probabilities the named attention modules return. Query rows at padding
    positions are ignored.
    """
    by_module = module_pairs(teacher_module, student_module)
    if by_module:
        fs, ft = student_out["features"], teacher_out["features"]
        maps = [(tensor_of(fs[s], attention=True), tensor_of(ft[t], attention=True)) for t, s in by_module]
    else:
        a_s, a_t = student_out["attentions"], teacher_out["attentions"]
        pairs = [tuple(p) for p in layer_map] if layer_map else uniform_layer_map(len(a_t), len(a_s))[1:]
        maps = [(a_s[s_i - 1], a_t[t_i - 1]) for t_i, s_i in pairs]
    total = 0.0
    eps = 1e-8
    for s, t in maps:
        t = t.to(s.dtype)
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        kl = (t * (torch.log(t + eps) - torch.log(s + eps))).sum(-1)  # [B, H, L]
        m = _mask(batch, kl[:, 0]).unsqueeze(1).expand_as(kl)
        total = total + (kl * m).sum() / m.sum().clamp_min(1.0)
    return total / len(maps)


needs("attention_kl", "attentions")
