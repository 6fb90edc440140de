"""The interface between a distillation method and the Ray Train engine, and the built-in
teacher -> student method for image and text classifiers.

The engine calls, on every worker::

    task = TaskSpec(...)                          # plain, picklable description of the run
    method = build_method(task)
    arrays = method.load_split("train")           # numpy arrays, preprocessed once
    student, teacher = method.build_student(), method.build_teacher()
    loss_fn = method.build_loss(student)          # WeightedLoss (may hold learnable parts)
    for batch in ...:                             # dict of tensors made by method.batch(arrays, idx)
        t_out = method.teacher_forward(teacher, batch)   # or read from the cache / actor pool
        loss, logs = method.loss(student, loss_fn, batch, t_out)
        ...; method.after_step(student, step)     # e.g. EMA updates
    metrics = method.evaluate(student, test_arrays)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raykd import data as D
from raykd import models as M
from raykd.data.prepare import Prepared, prepare
from raykd.losses import WeightedLoss
from raykd.registry import Registry

METHODS: Registry = Registry("method")


@dataclass
class TaskSpec:
    """Everything a worker needs to run one student's training (picklable, config-independent)."""

    dataset: dict[str, Any]                      # DataConfig as a dict
    student: dict[str, Any]                      # {"name", "args"}
    teacher: dict[str, Any] | None = None        # {"name", "args", "weights": path or None}
    losses: list[dict] = field(default_factory=lambda: [{"name": "ce"}])
    train: dict[str, Any] = field(default_factory=dict)
    method: str = "classify"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def uses_teacher(self) -> bool:
        return self.teacher is not None and any(l["name"] != "ce" for l in self.losses)


def load_arrays(dataset: dict, split: str) -> dict[str, np.ndarray]:
    """One split of a run's prepared data (see :func:`raykd.data.prepare.prepare`)."""
    data = prepare(dataset)
    return data.train if split == "train" else data.test


def num_classes_of(dataset: dict) -> int:
    if dataset.get("name") != "user":
        return int(dataset.get("num_classes") or D.info(dataset["name"]).num_classes)
    return prepare(dataset).num_classes


class ClassifyMethod:
    """Teacher -> student distillation for classifiers: any weighted sum of registered losses.

    Images are normalised floats; text is tokenised once with the MiniLM tokenizer.
    """

    def __init__(self, task: TaskSpec):
        self.task = task
        self.num_classes = num_classes_of(task.dataset)
        self._tok = None
        self._splits: dict[str, dict[str, np.ndarray]] = {}

    @property
    def data(self) -> Prepared:
        """The run's splits, label names and image normalisation (prepared once per process)."""
        return prepare(self.task.dataset)

    # ---- data -------------------------------------------------------------------------------
    def is_text(self, arrays: dict) -> bool:
        return "text" in arrays or "input_ids" in arrays

    def load_split(self, split: str) -> dict[str, np.ndarray]:
        if split not in self._splits:
            self._splits[split] = self._load_split(split)
        return self._splits[split]

    def _load_split(self, split: str) -> dict[str, np.ndarray]:
        arrays = load_arrays(self.task.dataset, split)
        if "text" in arrays:
            from raykd.models.bert import tokenizer

            self._tok = self._tok or tokenizer()
            enc = self._tok(list(arrays["text"]), padding="max_length", truncation=True,
                            max_length=int(self.task.dataset.get("max_length", 64)), return_tensors="np")
            arrays = {"input_ids": enc["input_ids"].astype(np.int64),
                      "attention_mask": enc["attention_mask"].astype(np.int64), "label": arrays["label"]}
        return arrays

    def batch(self, arrays: dict, idx: np.ndarray) -> dict[str, torch.Tensor]:
        if "input_ids" in arrays:
            ids = torch.from_numpy(np.ascontiguousarray(arrays["input_ids"][idx]))
            mask = torch.from_numpy(np.ascontiguousarray(arrays["attention_mask"][idx]))
            keep = int(mask.sum(1).max())  # trim padding columns shared by the whole batch
            return {"input_ids": ids[:, :keep], "attention_mask": mask[:, :keep],
                    "label": torch.from_numpy(arrays["label"][idx])}
        x = torch.from_numpy(np.ascontiguousarray(arrays["x"][idx])).float().div_(255.0)
        mean, std = self._norm
        return {"x": (x - mean) / std, "label": torch.from_numpy(arrays["label"][idx])}

    @functools.cached_property
    def _norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the training images, shaped to broadcast over [B, C, H, W]."""
        norm = self.data.norm
        return (torch.tensor(norm["mean"]).view(1, -1, 1, 1), torch.tensor(norm["std"]).view(1, -1, 1, 1))

    # ---- models -----------------------------------------------------------------------------
    def build_student(self) -> nn.Module:
        model = M.build(self.task.student["name"], num_classes=self.num_classes, **self.task.student.get("args", {}))
        if self.task.extra.get("student_init", "random") == "teacher_layers":
            from raykd.distill.lm import init_student_from_teacher

            init_student_from_teacher(model, self.task.teacher, self.num_classes)
        return model

    def build_teacher(self) -> nn.Module | None:
        if not self.task.uses_teacher:
            return None
        from raykd.engine.checkpoint import load_weights

        t = M.build(self.task.teacher["name"], num_classes=self.num_classes, **self.task.teacher.get("args", {}))
        if self.task.teacher.get("weights"):
            load_weights(t, self.task.teacher["weights"])
        t.eval()
        for p in t.parameters():
            p.requires_grad_(False)
        return t

    def loss_context(self, student: nn.Module, teacher: nn.Module | None) -> dict:
        ctx: dict[str, Any] = {"num_classes": self.num_classes}
        for key, m in (("student", student), ("teacher", teacher)):
            cfg = getattr(m, "config", None)
            if cfg is not None:
                ctx[f"{key}_hidden"] = cfg.hidden_size
                ctx[f"{key}_layers"] = cfg.num_hidden_layers
        return ctx

    def teacher_context(self) -> dict:
        """The teacher's width and depth without loading its weights (for losses that need them)."""
        if not self.task.teacher:
            return {}
        if self.task.teacher["name"] == "minilm-l6":
            from raykd.models.bert import MINILM_HIDDEN, MINILM_LAYERS

            return {"teacher_hidden": MINILM_HIDDEN, "teacher_layers": MINILM_LAYERS}
        with torch.device("meta"):
            t = M.build(self.task.teacher["name"], num_classes=self.num_classes, **self.task.teacher.get("args", {}))
        cfg = getattr(t, "config", None)
        return {"teacher_hidden": cfg.hidden_size, "teacher_layers": cfg.num_hidden_layers} if cfg is not None else {}

    def build_loss(self, student: nn.Module, teacher: nn.Module | None = None) -> WeightedLoss:
        ctx = self.loss_context(student, teacher)
        if teacher is None:
            ctx |= self.teacher_context()
        return WeightedLoss(self.task.losses, ctx)

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: dict, needs: set[str] = frozenset()) -> dict:
        if "input_ids" in batch:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states="hidden_states" in needs, output_attentions="attentions" in needs)
            res = {"logits": out.logits}
            if "hidden_states" in needs:
                res["hidden_states"] = out.hidden_states
            if "attentions" in needs:
                res["attentions"] = out.attentions
            return res
        return {"logits": model(batch["x"])}

    @torch.no_grad()
    def teacher_forward(self, teacher: nn.Module, batch: dict, needs: set[str]) -> dict:
        return self.forward(teacher, batch, needs | {"logits"})

    def loss(self, student: nn.Module, loss_fn: WeightedLoss, batch: dict, teacher_out: dict | None):
        needs = loss_fn.teacher_needs
        s_out = self.forward(student, batch, needs)
        return loss_fn(s_out, teacher_out, batch)

    def after_step(self, student: nn.Module, step: int) -> None:
        """Hook after each optimizer step (e.g. EMA updates); nothing for plain distillation."""

    # ---- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, model: nn.Module, arrays: dict, batch_size: int = 512) -> torch.Tensor:
        was = model.training
        model.eval()
        n = len(arrays["label"])
        outs = [self.forward(model, self.batch(arrays, np.arange(i, min(n, i + batch_size))))["logits"].float()
                for i in range(0, n, batch_size)]
        model.train(was)
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes)

    def evaluate(self, model: nn.Module, arrays: dict) -> dict[str, float]:
        logits = self.predict_logits(model, arrays)
        labels = torch.from_numpy(np.asarray(arrays["label"]))
        return {"correct": float((logits.argmax(1) == labels).sum()), "count": float(len(labels)),
                "nll_sum": float(F.cross_entropy(logits, labels, reduction="sum"))}

    def example_input(self, arrays: dict) -> torch.Tensor | dict:
        b = self.batch(arrays, np.arange(1))
        return {k: v for k, v in b.items() if k in ("input_ids", "attention_mask")} if "input_ids" in b else b["x"]


METHODS.register("classify", ClassifyMethod)


def build_method(task: TaskSpec):
    return METHODS.get(task.method)(task)


def lr_at(step: int, total: int, base: float, schedule: str, warmup_fraction: float = 0.0) -> float:
    warm = int(total * warmup_fraction)
    if warm and step < warm:
        return base * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    if schedule == "linear":
        return base * max(0.0, 1 - frac)
    return base
