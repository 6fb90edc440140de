"""Output-regularising losses from "Self-Distillation as Instance-Specific Label Smoothing"
(Zhang & Sabuncu, NeurIPS 2020) and the baselines it compares with.

Every loss here is a cross-entropy against some target distribution q over the K classes,
``H(q, p) = -sum_k q_k log p_k`` with ``p = softmax(z_s)``:

* ``label_smoothing``    q = (1 - eps) on the label, eps / (K - 1) on every other class (uniform prior)
* ``confidence_penalty`` CE(y, p) - beta * H(p)                     (Pereyra et al. 2017)
* ``soft_ce``            q = softmax(z_t / T): the previous generation's softened predictions
* ``beta_smoothing``     q = b_i on the label, (1 - b_i) / (K - 1) elsewhere, with b_i ~ Beta(a, 1)
                         handed out by the rank of the reference model's confidence in the label

``soft_ce`` and ``beta_smoothing`` read ``teacher_out["logits"]``: for self-distillation that is
generation g-1; for Beta smoothing it is the student's own EMA copy (see
:mod:`raykd.distill.self_distill`). The paper's objectives are weighted sums with ``ce``, e.g.
``(1 - alpha) * ce + alpha * soft_ce``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from raykd.losses import LossParams, needs, register_loss


class LabelSmoothingParams(LossParams):
    epsilon: float = Field(0.1, ge=0, lt=1, description="mass spread over the other classes")


class ConfidencePenaltyParams(LossParams):
    beta: float = Field(0.1, ge=0, description="weight of the entropy bonus")


class SoftCEParams(LossParams):
    temperature: float = Field(4.0, gt=0, description="temperature T of the previous generation's logits")


class BetaSmoothingParams(LossParams):
    a: float = Field(3.0, gt=0, description="b ~ Beta(a, 1)")


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """H(q, p) = -sum_k q_k log softmax(z)_k, batch mean."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def smoothed_targets(labels: torch.Tensor, num_classes: int, on_target: torch.Tensor | float) -> torch.Tensor:
    """q with ``on_target`` on each label and the rest, (1 - on_target) / (K - 1), on every other class."""
    on = torch.as_tensor(on_target, dtype=torch.float32, device=labels.device).expand(labels.shape[0])
    q = ((1.0 - on) / (num_classes - 1)).unsqueeze(1).repeat(1, num_classes)
    return q.scatter(1, labels.unsqueeze(1), on.unsqueeze(1))


@register_loss("label_smoothing", params=LabelSmoothingParams)
def label_smoothing(student_out, teacher_out, batch, epsilon: float = 0.1):
    """H(q, p), q = (1 - eps) on y and eps / (K - 1) on each other class; eps = 0 is plain CE."""
    logits = student_out["logits"]
    q = smoothed_targets(batch["label"], logits.shape[-1], 1.0 - float(epsilon))
    return soft_cross_entropy(logits, q)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_k p_k log p_k per row, p = softmax(z)."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


@register_loss("confidence_penalty", params=ConfidencePenaltyParams)
def confidence_penalty(student_out, teacher_out, batch, beta: float = 0.1):
    """CE(y, p) - beta * H(p): penalise low-entropy (over-confident) predictions."""
    logits = student_out["logits"]
    return F.cross_entropy(logits, batch["label"]) - float(beta) * entropy(logits).mean()


@register_loss("soft_ce", params=SoftCEParams)
def soft_ce(student_out, teacher_out, batch, temperature: float = 4.0):
    """Self-distillation term CE(softmax(z_{g-1} / T), p) with the student at temperature 1."""
    q = F.softmax(teacher_out["logits"].float() / float(temperature), dim=-1)
    return soft_cross_entropy(student_out["logits"], q)


needs("soft_ce", "logits")


def beta_targets(confidence: torch.Tensor, labels: torch.Tensor, num_classes: int, a: float = 3.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Beta-smoothing targets for one batch.

    Draw n values b ~ Beta(a, 1), sort them, and give the larger b to the samples whose
    ``confidence`` (the reference model's probability of the true class) is higher; sample i's target
    is b_i on its label and (1 - b_i) / (K - 1) on each other class.
    """
    n = confidence.shape[0]
    u = torch.rand(n, generator=generator, device=confidence.device)
    b = u.pow(1.0 / float(a))                      # b ~ Beta(a, 1) by inverse CDF: F(b) = b^a
    b_sorted = torch.sort(b).values                # ascending
    rank = torch.argsort(confidence)               # least confident first
    b_assigned = torch.empty_like(b_sorted).scatter_(0, rank, b_sorted)
    return smoothed_targets(labels, num_classes, b_assigned)


@register_loss("beta_smoothing", params=BetaSmoothingParams)
def beta_smoothing(student_out, teacher_out, batch, a: float = 3.0):
    """H(q_beta, p): soft-CE against Beta(a, 1) targets ranked by the reference model's p(y|x)."""
    logits = student_out["logits"]
    with torch.no_grad():
        ref_p = F.softmax(teacher_out["logits"].float(), dim=-1)
        confidence = ref_p.gather(1, batch["label"].unsqueeze(1)).squeeze(1)
        q = beta_targets(confidence, batch["label"], logits.shape[-1], a)
    return soft_cross_entropy(logits, q)


needs("beta_smoothing", "logits")
