"""Metrics in one place: the distillation metric DS, and classifier quality: accuracy, negative log-likelihood, expected calibration error
(with its reliability diagram) and the predictive diversity of a (teacher's) predictions.

All functions take logits or probabilities as numpy arrays or torch tensors, ``[N, K]``, and integer
labels ``[N]``.

* ECE (Guo et al. 2017): split predictions into ``n_bins`` equal-width confidence bins (confidence =
  max_k p_k); ECE = sum_b (n_b / N) * |acc_b - conf_b|.
* Diversity (Zhang & Sabuncu 2020 tie self-distillation gains to it): how much a model's predictions
  vary beyond the arg-max -- the mean entropy H(p), and how unevenly each prediction spreads its
  non-target mass: the per-sample standard deviation of p over the K-1 non-target classes after
  renormalising them to sum to 1 (0 when that mass is uniform, as in label smoothing), averaged.

The distillation metric of Alkhulaifi, Alsahli & Ahmad (PeerJ CS 2021)::

    DS = a * (size_s / size_t) + (1 - a) * (1 - acc_s / acc_t)

``a`` in [0, 1] weighs size against accuracy; lower is better, 0 is ideal (a free student that
matches the teacher), and DS is negative when the student beats the teacher by more than its size
costs. :func:`ds_column`, :func:`leaderboard` and :func:`pareto_front` recompute and rank it from a
results table for any ``a`` and size measure, without rerunning anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def softmax(logits) -> np.ndarray:
    z = _np(logits).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy(probs, labels) -> float:
    """Fraction of arg-max predictions equal to the label (logits work too)."""
    return float((_np(probs).argmax(1) == _np(labels)).mean())


def nll(probs, labels, eps: float = 1e-12) -> float:
    """Mean -log p(y|x) from probabilities."""
    p, y = _np(probs).astype(np.float64), _np(labels).astype(np.int64)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0)).mean())


def reliability_bins(probs, labels, n_bins: int = 15) -> dict[str, list[float]]:
    """Per confidence bin ``(i/n, (i+1)/n]``: sample count, accuracy and mean confidence."""
    p, y = _np(probs), _np(labels)
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    acc = np.bincount(idx, weights=correct, minlength=n_bins) / np.maximum(count, 1)
    mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / np.maximum(count, 1)
    return {"count": count.tolist(), "accuracy": acc.tolist(), "confidence": mean_conf.tolist()}


def ece_from_bins(bins: dict[str, list[float]]) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b|."""
    count = np.asarray(bins["count"])
    gap = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float((count * gap).sum() / max(count.sum(), 1.0))


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins."""
    return ece_from_bins(reliability_bins(probs, labels, n_bins))


def predictive_diversity(probs, labels) -> dict[str, float]:
    """Mean entropy, spread of the non-target probabilities, and spread of p(y|x) over samples."""
    p, y = _np(probs).astype(np.float64), _np(labels).astype(np.int64)
    n, k = p.shape
    ent = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(1)
    p_true = p[np.arange(n), y]
    mask = np.ones_like(p, dtype=bool)
    mask[np.arange(n), y] = False
    others = p[mask].reshape(n, k - 1)
    others = others / np.clip(others.sum(1, keepdims=True), 1e-12, None)  # renormalised non-target mass
    return {"mean_entropy": float(ent.mean()), "nontarget_std": float(others.std(1).mean()),
            "true_prob_mean": float(p_true.mean()), "true_prob_std": float(p_true.std())}


def classification_metrics(logits, labels, n_bins: int = 15) -> dict:
    """Accuracy, NLL, ECE, reliability bins and diversity of one model's predictions."""
    p = softmax(logits)
    bins = reliability_bins(p, labels, n_bins)
    return {"accuracy": accuracy(p, labels), "nll": nll(p, labels), "ece": ece_from_bins(bins),
            "reliability": bins, **predictive_diversity(p, labels)}


def pool_bins(all_bins: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Merge reliability bins of several runs (e.g. seeds) into one, weighting by counts."""
    count = np.sum([b["count"] for b in all_bins], axis=0)
    acc = np.sum([np.asarray(b["accuracy"]) * b["count"] for b in all_bins], axis=0) / np.maximum(count, 1)
    conf = np.sum([np.asarray(b["confidence"]) * b["count"] for b in all_bins], axis=0) / np.maximum(count, 1)
    return {"count": count.tolist(), "accuracy": acc.tolist(), "confidence": conf.tolist()}


def plot_reliability(bins_by_name: dict[str, dict[str, list[float]]], path: str | Path, title: str = "") -> Path:
    """One reliability diagram per entry (accuracy per confidence bin against the diagonal) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bins_by_name)
    cols = min(4, max(1, len(names)))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        b = bins_by_name[name]
        n_bins = len(b["count"])
        centers = (np.arange(n_bins) + 0.5) / n_bins
        has = np.asarray(b["count"]) > 0
        ax.bar(centers[has], np.asarray(b["accuracy"])[has], width=1.0 / n_bins, edgecolor="k", alpha=0.7, label="accuracy")
        ax.bar(centers[has], (np.asarray(b["confidence"]) - np.asarray(b["accuracy"]))[has], bottom=np.asarray(b["accuracy"])[has],
               width=1.0 / n_bins, color="tab:red", alpha=0.3, label="gap")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_title(f"{name}\nECE {ece_from_bins(b):.3f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# The distillation metric
# ----------------------------------------------------------------------------------------------

SIZE_COLUMNS = {"params": ("params", "teacher_params"), "bytes": ("bytes", "teacher_bytes"), "macs": ("macs", "teacher_macs")}


def distillation_score(size_s: float, size_t: float, acc_s: float, acc_t: float, a: float = 0.5) -> float:
    """DS for one student. Sizes must be > 0, accuracies in [0, 1] with acc_t > 0, a in [0, 1]."""
    if not 0.0 <= a <= 1.0 or math.isnan(a):
        raise ValueError(f"a must be in [0, 1], got {a}")
    if not (size_s > 0 and size_t > 0):
        raise ValueError(f"sizes must be > 0, got student {size_s}, teacher {size_t}")
    if not 0.0 <= acc_s <= 1.0:
        raise ValueError(f"student accuracy must be in [0, 1], got {acc_s}")
    if not 0.0 < acc_t <= 1.0:
        raise ValueError(f"teacher accuracy must be in (0, 1], got {acc_t}")
    return a * (size_s / size_t) + (1.0 - a) * (1.0 - acc_s / acc_t)


def ds_column(df: pd.DataFrame, a: float = 0.5, size: str = "params") -> pd.Series:
    """DS for every row of a results table, re-computed from its columns (no rerun needed)."""
    if size not in SIZE_COLUMNS:
        raise ValueError(f"size must be one of {sorted(SIZE_COLUMNS)}, got {size!r}")
    s_col, t_col = SIZE_COLUMNS[size]
    out = []
    for s, t, acc, tacc in zip(df[s_col], df[t_col], df["accuracy"], df["teacher_accuracy"]):
        ok = all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in (s, t, acc, tacc))
        out.append(distillation_score(float(s), float(t), float(acc), float(tacc), a) if ok and t > 0 and tacc > 0 else np.nan)
    return pd.Series(out, index=df.index, name=f"ds_a{a:g}_{size}")


def leaderboard(df: pd.DataFrame, a: float = 0.5, size: str = "params") -> pd.DataFrame:
    """The table re-ranked by DS for the chosen ``a`` (lower is better)."""
    out = df.copy()
    out["ds"] = ds_column(out, a=a, size=size)
    out["ds_a"] = a
    out["ds_size"] = size
    return out.sort_values(["ds", "accuracy"], ascending=[True, False], na_position="last").reset_index(drop=True)


def pareto_front(df: pd.DataFrame, size: str = "params") -> pd.DataFrame:
    """Rows not dominated in (smaller size, higher accuracy), sorted by size."""
    s_col = SIZE_COLUMNS[size][0]
    d = df.dropna(subset=[s_col, "accuracy"]).sort_values([s_col, "accuracy"], ascending=[True, False])
    keep, best = [], -np.inf
    for idx, acc in zip(d.index, d["accuracy"]):
        if acc > best:
            keep.append(idx)
            best = acc
    return d.loc[keep]


SEED_VERDICT_RULE = (
    "d_s = metric(a) - metric(b) on seed s (paired: same seed), signed so that d > 0 means a is better. "
    "'holds': mean(d) > std(d) (population std over seeds) and d_s > 0 on every seed; 'does not hold': "
    "mean(d) < -std(d) (a is worse by more than the spread); 'undecided': anything else, and always with "
    "fewer than 3 seeds.")


def seed_verdict(better: pd.Series, min_seeds: int = 3) -> str:
    """Whether "a is better than b" holds over seeds, from paired per-seed differences ``better``
    (signed so that > 0 means a is better): see :data:`SEED_VERDICT_RULE`."""
    better = better.dropna()
    if len(better) < min_seeds:
        return "undecided"
    if better.mean() > better.std(ddof=0) and (better > 0).all():
        return "holds"
    if better.mean() < -better.std(ddof=0):
        return "does not hold"
    return "undecided"


def paired_verdict(differences: pd.Series, sign: int = 1, min_seeds: int = 3) -> dict:
    """Paired per-seed differences a - b of one metric (indexed by seed) with the verdict of the claim
    "a is better than b"; ``sign`` is +1 where higher is better, -1 where lower is (NLL, ECE)."""
    d = differences.dropna()
    better = d * sign
    return {"mean": float(d.mean()) if len(d) else None, "std": float(d.std(ddof=0)) if len(d) else None,
            "better_on": int((better > 0).sum()), "seeds": int(len(d)),
            "per_seed": {int(k): float(v) for k, v in d.items()}, "verdict": seed_verdict(better, min_seeds)}
