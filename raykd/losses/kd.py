"""Classic distillation losses: cross-entropy, logit KD, hidden-state MSE, attention-map KL."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from raykd.losses import LayerMap, LossParams, needs, register_loss


class KDParams(LossParams):
    temperature: float = Field(4.0, gt=0, description="softmax temperature T of both models' logits")


class LayerMapParams(LossParams):
    layer_map: LayerMap | None = Field(None, description="[teacher_layer, student_layer] pairs (hidden states: 0 = "
                                       "embeddings; attention maps: 1..N); default: uniform layer skipping")


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
    """TinyBERT-style hidden-state MSE over matched layers, MSE(h_s W, h_t), padding masked.

    A learned linear projection W maps student width to teacher width when they differ.
    """

    def __init__(self, context: dict, layer_map: list[list[int]] | None = None):
        super().__init__()
        ds, dt = context.get("student_hidden"), context.get("teacher_hidden")
        self.layer_map = [tuple(p) for p in layer_map] if layer_map else None
        self.n_t, self.n_s = context.get("teacher_layers"), context.get("student_layers")
        self.proj = nn.Linear(ds, dt, bias=False) if ds and dt and ds != dt else nn.Identity()

    def forward(self, student_out, teacher_out, batch):
        hs, ht = student_out["hidden_states"], teacher_out["hidden_states"]
        pairs = self.layer_map or uniform_layer_map(len(ht) - 1, len(hs) - 1)
        total = 0.0
        for t_i, s_i in pairs:
            s, t = self.proj(hs[s_i]), ht[t_i].to(hs[s_i].dtype)
            m = _mask(batch, s).unsqueeze(-1)
            total = total + ((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1]).clamp_min(1.0)
        return total / len(pairs)


needs("hidden_mse", "hidden_states")


@register_loss("attention_kl", params=LayerMapParams)
def attention_kl(student_out, teacher_out, batch, layer_map: list[list[int]] | None = None):
    """KL(A_t || A_s) of attention maps over matched layers (heads averaged when counts differ).

    Attention layers are 1-indexed like hidden states (layer l's map is attentions[l-1]); query rows
    at padding positions are ignored.
    """
    a_s, a_t = student_out["attentions"], teacher_out["attentions"]
    pairs = [tuple(p) for p in layer_map] if layer_map else uniform_layer_map(len(a_t), len(a_s))[1:]
    total = 0.0
    eps = 1e-8
    for t_i, s_i in pairs:
        s, t = a_s[s_i - 1], a_t[t_i - 1].to(a_s[s_i - 1].dtype)
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        kl = (t * (torch.log(t + eps) - torch.log(s + eps))).sum(-1)  # [B, H, L]
        m = _mask(batch, kl[:, 0]).unsqueeze(1).expand_as(kl)
        total = total + (kl * m).sum() / m.sum().clamp_min(1.0)
    return total / len(pairs)


needs("attention_kl", "attentions")
