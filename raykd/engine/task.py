"""What a Ray Train worker trains: a :class:`TaskSpec` (a typed, picklable description of one
model's training run) and the :class:`ClassifyTask` that turns it into data, models, losses and
evaluation. Methods that need more (DynaBERT's sub-networks, Beta smoothing's EMA model) subclass
``ClassifyTask`` and name their class in ``TaskSpec.kind``; the engine never needs to know which.

The engine calls, on every worker::

    task = spec.kind(spec)
    arrays = task.load_split("train")            # numpy arrays, preprocessed once per process
    student, teacher = task.build_student(), task.build_teacher()
    loss_fn = task.build_loss(student)           # WeightedLoss (may hold learnable parts)
    for batch in ...:                            # dict of tensors made by task.batch(arrays, idx)
        t_out = task.teacher_forward(teacher, batch)   # or read from the cache / actor pool
        loss, logs = task.loss(student, loss_fn, batch, t_out)
        ...; task.after_step(student, step)      # e.g. EMA updates
    metrics = task.evaluate(student, test_arrays)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from raykd import data as D
from raykd import models as M
from raykd.config import DataConfig, LossSpec, ModelSpec, TrainConfig
from raykd.data.prepare import Prepared, prepare
from raykd.losses import WeightedLoss, loss_reads
from raykd.losses.features import as_list, tensor_of
from raykd.models.features import capture


class TeacherRef(ModelSpec):
    """A frozen teacher of a task: its architecture and the weights file to load (None: untrained)."""

    weights: str | None = None


class TaskSpec(BaseModel):
    """Everything a worker needs to train one model: typed config sections (dicts are accepted and
    validated into them), and the task class that runs it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    dataset: DataConfig
    student: ModelSpec
    teacher: TeacherRef | None = None
    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec(name="ce")])
    train: TrainConfig = Field(default_factory=TrainConfig)
    student_init: Literal["random", "teacher_layers"] = "random"  # teacher_layers: copy the teacher's layers first
    kind: Any = None  # the ClassifyTask subclass that runs it (None: ClassifyTask); pickled by reference
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def uses_teacher(self) -> bool:
        return self.teacher is not None and any(l.name != "ce" for l in self.losses)

    @property
    def teacher_needs(self) -> set[str]:
        """The teacher outputs the losses read (always the logits)."""
        return {"logits"}.union(*(loss_reads(spec.name, spec.params) for spec in self.losses))

    def loss_dicts(self) -> list[dict]:
        return [l.as_dict() for l in self.losses]

    def modules(self, role: str) -> tuple[str, ...]:
        """The module paths of the teacher or student whose outputs the losses read (``teacher_module``
        / ``student_module`` of feature losses), in first-use order."""
        paths = (p for spec in self.losses for p in as_list(spec.params.get(f"{role}_module")))
        return tuple(dict.fromkeys(paths))


def num_classes_of(dataset: DataConfig) -> int:
    if dataset.name != "user":
        return int(dataset.num_classes or D.info(dataset.name).num_classes)
    return prepare(dataset).num_classes


def _encode(tok, texts: list[str], max_length: int, prefix: str) -> dict[str, np.ndarray]:
    """Token ids and attention masks of ``texts``, padded to ``max_length``, keys prefixed by ``prefix``."""
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {f"{prefix}input_ids": enc["input_ids"].astype(np.int64),
            f"{prefix}attention_mask": enc["attention_mask"].astype(np.int64)}


def build_task(spec: TaskSpec) -> "ClassifyTask":
    return (spec.kind or ClassifyTask)(spec)


def load_arrays(dataset: DataConfig | dict, split: str) -> dict[str, np.ndarray]:
    """One split of a run's prepared data (``train``, ``val`` or ``test``; see :func:`raykd.data.prepare.prepare`)."""
    data = prepare(dataset)
    if split == "val":
        if data.val is None:
            raise ValueError("this run's data has no validation split (data.validation is not set)")
        return data.val
    return data.train if split == "train" else data.test


class ClassifyTask:
    """Teacher -> student distillation for classifiers: any weighted sum of registered losses.

    Images are normalised floats; text is tokenised once with the MiniLM tokenizer.
    """

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.num_classes = num_classes_of(spec.dataset)
        self._toks: dict[str, Any] = {}
        self._splits: dict[str, dict[str, np.ndarray]] = {}

    @property
    def data(self) -> Prepared:
        """The run's splits, label names and image normalisation (prepared once per process)."""
        return prepare(self.spec.dataset)

    # ---- data -------------------------------------------------------------------------------
    def is_text(self, arrays: dict) -> bool:
        return "text" in arrays or "input_ids" in arrays

    def load_split(self, split: str) -> dict[str, np.ndarray]:
        if split not in self._splits:
            self._splits[split] = self._load_split(split)
        return self._splits[split]

    def _load_split(self, split: str) -> dict[str, np.ndarray]:
        arrays = load_arrays(self.spec.dataset, split)
        if "text" in arrays:
            texts, length = list(arrays["text"]), self.spec.dataset.max_length
            out = {"label": arrays["label"]}
            out |= _encode(self.tokenizer("student"), texts, length, "")
            if self.spec.teacher is not None and not self.shared_tokenizer:  # the teacher reads its own ids
                out |= _encode(self.tokenizer("teacher"), texts, length, "t_")
            arrays = out
        return arrays

    def tokenizer(self, role: str):
        """The tokenizer of the student or the teacher: the model's own (``hf`` models), else MiniLM's."""
        if role not in self._toks:
            m = self.spec.student if role == "student" else self.spec.teacher
            tok = M.model_tokenizer(m.name, m.args)
            if tok is None:
                from raykd.models.bert import tokenizer

                tok = tokenizer()
            self._toks[role] = tok
        return self._toks[role]

    @functools.cached_property
    def shared_tokenizer(self) -> bool:
        """Whether the teacher reads the same token ids as the student."""
        from raykd.models.hf import tokenizer_fingerprint

        if self.spec.teacher is None:
            return True
        return tokenizer_fingerprint(self.tokenizer("student")) == tokenizer_fingerprint(self.tokenizer("teacher"))

    def batch(self, arrays: dict, idx: np.ndarray) -> dict[str, torch.Tensor]:
        if "input_ids" in arrays:
            out = {"label": torch.from_numpy(arrays["label"][idx])}
            for prefix in ("", "t_") if "t_input_ids" in arrays else ("",):
                ids = torch.from_numpy(np.ascontiguousarray(arrays[f"{prefix}input_ids"][idx]))
                mask = torch.from_numpy(np.ascontiguousarray(arrays[f"{prefix}attention_mask"][idx]))
                keep = max(1, int(mask.sum(1).max()))  # trim padding columns shared by the whole batch
                out[f"{prefix}input_ids"], out[f"{prefix}attention_mask"] = ids[:, :keep], mask[:, :keep]
            return out
        x = torch.from_numpy(np.ascontiguousarray(arrays["x"][idx])).float().div_(255.0)
        mean, std = self._norm
        return {"x": (x - mean) / std, "label": torch.from_numpy(arrays["label"][idx])}

    @functools.cached_property
    def _norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the training images, shaped to broadcast over [B, C, H, W]."""
        norm = self.data.norm
        return (torch.tensor(norm["mean"]).view(1, -1, 1, 1), torch.tensor(norm["std"]).view(1, -1, 1, 1))

    # ---- models -----------------------------------------------------------------------------
    def runtime_args(self) -> dict[str, Any]:
        """What models are told about the data: classes, class names and, for images, [C, H, W]."""
        train = self.load_split("train")
        shape = list(train["x"].shape[1:]) if "x" in train else None
        return {"num_classes": self.num_classes, "label_names": list(self.data.labels.names), "input_shape": shape}

    def build_student(self) -> nn.Module:
        model = M.build(self.spec.student.name, **self.runtime_args(), **self.spec.student.args)
        if self.spec.student_init == "teacher_layers":
            from raykd.models.bert import copy_teacher_layers

            copy_teacher_layers(model, self._trained_teacher())
        return model

    def _trained_teacher(self) -> nn.Module:
        from raykd.engine.checkpoint import load_weights

        t = self.spec.teacher
        model = M.build(t.name, **self.runtime_args(), **t.args)
        if t.weights:  # None: the model's own files (an hf directory, timm weights) hold its weights
            load_weights(model, t.weights)
        return model

    def build_teacher(self) -> nn.Module | None:
        if not self.spec.uses_teacher:
            return None
        t = self._trained_teacher()
        t.eval()
        for p in t.parameters():
            p.requires_grad_(False)
        return t

    def loss_context(self, student: nn.Module, teacher: nn.Module | None) -> dict:
        ctx: dict[str, Any] = {"num_classes": self.num_classes}
        for key, m in (("student", student), ("teacher", teacher)):
            cfg = getattr(m, "config", None)
            if cfg is not None and hasattr(cfg, "num_hidden_layers"):
                ctx[f"{key}_hidden"] = cfg.hidden_size
                ctx[f"{key}_layers"] = cfg.num_hidden_layers
        if self.spec.modules("student") and teacher is not None:
            ctx["feature_shapes"] = self.feature_shapes(student, teacher)
        return ctx

    @torch.no_grad()
    def feature_shapes(self, student: nn.Module, teacher: nn.Module) -> dict[str, dict[str, tuple[int, ...]]]:
        """Per-example output shapes of the hooked modules (one forward of one training example each),
        so losses can size their projections before training."""
        b = self.batch(self.load_split("train"), np.arange(1))
        out = {}
        for role, m in (("student", student), ("teacher", teacher)):
            was = m.training
            m.eval()
            feats = self.forward(m, b, {"features"}, role)["features"]
            m.train(was)
            out[role] = {p: tuple(tensor_of(f).shape[1:]) for p, f in feats.items()}
        return out

    def teacher_context(self) -> dict:
        """The teacher's width and depth without loading its weights (for losses that need them)."""
        if not self.spec.teacher:
            return {}
        t = M.meta_model(self.spec.teacher.name, self.spec.teacher.args, self.num_classes)
        cfg = getattr(t, "config", None)
        return {"teacher_hidden": cfg.hidden_size, "teacher_layers": cfg.num_hidden_layers} \
            if cfg is not None and hasattr(cfg, "num_hidden_layers") else {}

    def build_loss(self, student: nn.Module, teacher: nn.Module | None = None) -> WeightedLoss:
        ctx = self.loss_context(student, teacher)
        if teacher is None:
            ctx |= self.teacher_context()
        return WeightedLoss(self.spec.loss_dicts(), ctx)

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: dict, needs: set[str] = frozenset(), role: str = "student") -> dict:
        """The model's outputs the losses read: ``logits``, and on request ``hidden_states``,
        ``attentions`` and ``features`` (outputs of the modules the losses name, by path, captured with
        forward hooks). ``role`` picks the token ids the model reads (the teacher may have its own)."""
        paths = self.spec.modules(role) if "features" in needs else ()
        with capture(model, paths) as feats:
            if "input_ids" in batch:
                prefix = "t_" if role == "teacher" and "t_input_ids" in batch else ""
                out = model(input_ids=batch[f"{prefix}input_ids"], attention_mask=batch[f"{prefix}attention_mask"],
                            output_hidden_states="hidden_states" in needs, output_attentions="attentions" in needs)
                res = {"logits": out.logits}
                if "hidden_states" in needs:
                    res["hidden_states"] = out.hidden_states
                if "attentions" in needs:
                    res["attentions"] = out.attentions
            else:
                res = {"logits": model(batch["x"])}
        if paths:
            res["features"] = feats
        return res

    @torch.no_grad()
    def teacher_forward(self, teacher: nn.Module, batch: dict, needs: set[str]) -> dict:
        return self.forward(teacher, batch, needs | {"logits"}, "teacher")

    def loss(self, student: nn.Module, loss_fn: WeightedLoss, batch: dict, teacher_out: dict | None):
        needs = loss_fn.teacher_needs
        s_out = self.forward(student, batch, needs)
        return loss_fn(s_out, teacher_out, batch)

    def after_step(self, student: nn.Module, step: int) -> None:
        """Hook after each optimizer step (e.g. EMA updates); nothing for plain distillation."""

    def on_epoch_start(self, epoch: int, rank: int) -> None:
        """Hook at the start of each epoch (1-based) on every worker; nothing by default."""

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


def make_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=True)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)


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
