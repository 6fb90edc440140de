"""DynaBERT: a width- and depth-adaptive BERT trained by distillation (Hou et al., NeurIPS 2020),
with either DynaBERT's own objective or the CKD objective of Park, Kim, Yang (EMNLP 2021).

One set of weights holds many sub-networks. A sub-network of width multiplier m_w keeps, in every
layer, the first round(m_w * H) attention heads and the first round(m_w * I) FFN neurons; one of
depth multiplier m_d keeps round(m_d * N) of the N layers, dropping every (N / dropped)-th layer
(for N = 12, m_d = 0.75: layers 4, 8, 12 go, as in the paper).

1. Start from the fine-tuned ``teacher:`` (MiniLM-L6-H384 by default; trained once on the full
   training split and cached by :func:`raykd.distill.kd.ensure_teacher`).
2. Network rewiring: score each head and neuron by the first-order change in the loss when it is
   removed, I = |sum_{w in its output weights} w * dL/dw| (removing head h zeroes its columns of the
   attention output projection W_O; removing neuron j zeroes column j of the FFN output W_2),
   summed over batches; then permute heads and neurons so the most important come first in every
   layer (the function of the full network is unchanged).
3. Adaptive training on the Ray Train engine: every step, every (m_w, m_d) sub-network distils from
   the fixed teacher and the gradients of all sub-networks are summed (Alg. 1 of the paper), with
   the ``losses:`` of the config, e.g.
       DynaBERT (default): L = lambda1 * SCE(z_s, z_t) + lambda2 * sum_l MSE(h_s^l, h_t^l)  (``kd`` + ``hidden_mse``)
       CKD:                L = KD_T(z_s, z_t) + w1 WR_pair + w2 WR_triple + w3 LTR_pair + w4 LTR_triple
   where a kept layer is matched to the teacher layer at the same original position.
   (The paper trains width first and then width + depth with the width-adaptive model as teacher;
   here both are trained in one stage from the fixed teacher, a simplification for small budgets.)
4. Every sub-network is extracted into its own, genuinely smaller model: fewer layers, fewer FFN
   neurons and fewer heads (sliced weights; a ``BertForSequenceClassification`` when all heads are
   kept, else a ``PrunedBertForSequenceClassification`` from raykd/models/hf_export.py, whose config
   holds the head size and whose code is saved alongside), evaluated on the test split, saved with
   ``save_pretrained`` and recorded as its own results row: its parameters, safetensors file bytes,
   MACs and CPU latency.
   Rows are labelled ``dynabert-ckd`` when the losses include CKD relations, else ``dynabert-dynabert``.

Config: the shared ``data``, ``teacher``, ``losses``, ``train`` and ``engine`` sections, and
``dynabert:`` (widths, depths, importance batches, seeds). Items of a run (a rerun skips those done):
``teacher``, ``adaptive-seed<s>`` (the Train run; the trained adaptive model is kept in
``students/adaptive-seed<s>/``) and one ``width<w>-depth<d>[-seed<s>]`` per sub-network.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from raykd.config import DataConfig, LossSpec, ModelSpec, TeacherConfig, TrainConfig, model_shape
from raykd.distill.kd import ensure_teacher, load_trained, save_student, write_data_description
from raykd.distill.lm import MINILM_TEACHER_TRAIN
from raykd.engine.checkpoint import load_weights, save_weights, unwrap
from raykd.engine.task import ClassifyTask, TaskSpec, TeacherRef, build_task
from raykd.engine.trainer import fit
from raykd.losses import LOSSES, NEEDS, WeightedLoss
from raykd.method import register_method
from raykd.models.size import count_params, cpu_latency_ms, macs_per_example, size_report
from raykd.paths import atomic_write_bytes
from raykd.results import make_row
from raykd.schema import FieldError, Strict

# ----------------------------------------------------------------------------------------------
# Settings: the dynabert: section and the defaults of the shared sections
# ----------------------------------------------------------------------------------------------

BERT_TEACHERS = ("minilm-l6", "bert")
CKD_RELATIONS = ("wr_pair", "wr_triple", "ltr_pair", "ltr_triple")


def default_teacher() -> TeacherConfig:
    return TeacherConfig(name="minilm-l6", train=TrainConfig(**MINILM_TEACHER_TRAIN))


def dynabert_losses() -> list[LossSpec]:
    """DynaBERT's objective: logits (kd, T = 1) + hidden-state MSE."""
    return [LossSpec(name="kd", weight=1.0, temperature=1.0), LossSpec(name="hidden_mse", weight=1.0)]


def default_train() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=32, lr=5e-5, optimizer="adamw", schedule="linear", warmup_fraction=0.1)


class DynaBertSettings(Strict):
    """``dynabert:`` what is DynaBERT's own (the shared sections say what is distilled, and how)."""

    widths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0], min_length=1, description="width multipliers m_w")
    depths: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0], min_length=1, description="depth multipliers m_d")
    importance_batches: int = Field(16, ge=1, description="training batches used to score heads and neurons")
    importance_batch_size: int = Field(32, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="one adaptive model per seed (its training and rewiring seed, plus the top-level seed)")

    @field_validator("widths", "depths")
    @classmethod
    def _multipliers(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < m <= 1.0 for m in v):
            raise ValueError(f"every multiplier must be in (0, 1], got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"multipliers must be distinct, got {v}")
        if 1.0 not in v:
            raise ValueError(f"must include 1.0 (the full network, whose step trains every weight), got {v}")
        return sorted(v)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v


def objective(losses: list[LossSpec]) -> str:
    """``ckd`` when the losses include CKD relations, else ``dynabert`` (the label of the rows)."""
    return "ckd" if any(l.name in CKD_RELATIONS for l in losses) else "dynabert"


def check(cfg) -> None:
    """Across sections: a BERT teacher on text, losses the sub-networks can compute, seeds in one place."""
    from raykd.data import info

    if cfg.teacher.name not in BERT_TEACHERS:
        raise FieldError("teacher.name", f"DynaBERT adapts a BERT teacher ({' or '.join(BERT_TEACHERS)}), got {cfg.teacher.name!r}")
    if cfg.data.name != "user" and info(cfg.data.name).kind != "text":
        raise FieldError("data.name", f"DynaBERT needs a text dataset, {cfg.data.name!r} is not one")
    if cfg.train.seed != 0:
        raise FieldError("train.seed", "DynaBERT trains one adaptive model per dynabert.seeds entry; set the seeds there")
    layers = model_shape(cfg.teacher).get("num_layers")
    shallowest = kept_count(layers, cfg.dynabert.depths[0]) if layers else None
    for i, spec in enumerate(cfg.losses):
        needs = NEEDS.get(spec.name, set())
        if "attentions" in needs:
            raise FieldError(f"losses.{i}.name", f"{spec.name} reads attention maps, which the sub-networks do not "
                             "output; use logit and hidden-state losses (kd, hidden_mse, CKD relations)")
        if "layer_map" in spec.params and "hidden_states" in needs:
            raise FieldError(f"losses.{i}.layer_map", "DynaBERT matches every kept layer to the teacher layer at "
                             "its original position, so a layer_map is not used; remove it")
        need = getattr(LOSSES.get(spec.name), "min_layers", 1)
        if "hidden_states" in needs and shallowest is not None and shallowest + 1 < need:
            raise FieldError(f"losses.{i}", f"{spec.name} needs {need} matched layers, but the shallowest sub-network "
                             f"(depth {cfg.dynabert.depths[0]:g}) has {shallowest} layers + embeddings; raise the "
                             "smallest depth or drop this loss")


# ----------------------------------------------------------------------------------------------
# Sub-networks: which heads, neurons and layers a (width, depth) pair keeps
# ----------------------------------------------------------------------------------------------

def kept_count(total: int, multiplier: float) -> int:
    """round(m * total), at least 1."""
    return max(1, int(round(multiplier * total)))


def kept_layers(num_layers: int, depth: float) -> list[int]:
    """0-based layers kept at depth multiplier m_d: drop every (N / dropped)-th layer.

    N = 12, m_d = 0.75 keeps all but layers 3, 7, 11 (0-based); N = 6, m_d = 0.5 keeps 0, 2, 4.
    """
    dropped = num_layers - kept_count(num_layers, depth)
    gone = {int(round((i + 1) * num_layers / dropped)) - 1 for i in range(dropped)} if dropped else set()
    return [l for l in range(num_layers) if l not in gone]


def depth_layer_map(num_layers: int, depth: float) -> list[tuple[int, int]]:
    """(teacher hidden state, sub-network hidden state) pairs: the embedding output, and each kept
    layer matched to the teacher layer at the same original position (hidden states are 1-indexed)."""
    return [(0, 0)] + [(l + 1, j + 1) for j, l in enumerate(kept_layers(num_layers, depth))]


@dataclass(frozen=True)
class Shape:
    heads: int
    head_size: int
    neurons: int
    layers: list[int]


def subnet_shape(config, width: float, depth: float) -> Shape:
    H = config.num_attention_heads
    return Shape(kept_count(H, width), config.hidden_size // H, kept_count(config.intermediate_size, width),
                 kept_layers(config.num_hidden_layers, depth))


# ----------------------------------------------------------------------------------------------
# The adaptive model: a BertForSequenceClassification run on slices of its own weights
# ----------------------------------------------------------------------------------------------

def _layer_forward(layer: nn.Module, x: torch.Tensor, mask_add: torch.Tensor, s: Shape) -> torch.Tensor:
    """One BERT layer restricted to its first ``s.heads`` heads and first ``s.neurons`` FFN neurons."""
    att, out = layer.attention.self, layer.attention.output
    B, L, _ = x.shape
    k = s.heads * s.head_size

    def heads(lin: nn.Linear) -> torch.Tensor:  # [B, h, L, dh]
        return F.linear(x, lin.weight[:k], lin.bias[:k]).view(B, L, s.heads, s.head_size).transpose(1, 2)

    q, kk, v = heads(att.query), heads(att.key), heads(att.value)
    probs = torch.softmax(q @ kk.transpose(2, 3) / math.sqrt(s.head_size) + mask_add, dim=-1)  # softmax(QK^T/sqrt(d) + M)
    ctx = (att.dropout(probs) @ v).transpose(1, 2).reshape(B, L, k)
    a = out.LayerNorm(out.dropout(F.linear(ctx, out.dense.weight[:, :k], out.dense.bias)) + x)
    inter, ffn_out = layer.intermediate, layer.output
    f = inter.intermediate_act_fn(F.linear(a, inter.dense.weight[: s.neurons], inter.dense.bias[: s.neurons]))
    return ffn_out.LayerNorm(ffn_out.dropout(F.linear(f, ffn_out.dense.weight[:, : s.neurons], ffn_out.dense.bias)) + a)


def subnet_forward(net: nn.Module, embeddings: torch.Tensor, attention_mask: torch.Tensor, width: float,
                   depth: float) -> dict[str, Any]:
    """Logits and hidden states (embedding output first) of the (width, depth) sub-network."""
    s = subnet_shape(net.config, width, depth)
    mask_add = (1.0 - attention_mask[:, None, None, :].to(embeddings.dtype)) * torch.finfo(embeddings.dtype).min
    x, hidden = embeddings, [embeddings]
    for l in s.layers:
        x = _layer_forward(net.bert.encoder.layer[l], x, mask_add, s)
        hidden.append(x)
    logits = net.classifier(net.dropout(net.bert.pooler(x)))
    return {"logits": logits, "hidden_states": tuple(hidden)}


class DynaBert(nn.Module):
    """Width- and depth-adaptive view of a ``BertForSequenceClassification`` (all weights shared).

    ``forward(input_ids, attention_mask, subnets)`` returns one output dict per (width, depth) pair;
    running them in one call lets DDP see one forward pass per step.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                subnets: tuple[tuple[float, float], ...] = ((1.0, 1.0),)) -> list[dict[str, Any]]:
        emb = self.net.bert.embeddings(input_ids=input_ids)  # shared by every sub-network
        return [subnet_forward(self.net, emb, attention_mask, w, d) for w, d in subnets]


# ----------------------------------------------------------------------------------------------
# Network rewiring: importance of heads and neurons, and the permutation that sorts them
# ----------------------------------------------------------------------------------------------

def importance_scores(net: nn.Module, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Head importance [N, H] and neuron importance [N, I]: I = sum_batches |sum(W * dL/dW)| over the
    head's columns of W_O, resp. the neuron's column of W_2, with L the cross-entropy of the labels."""
    cfg = net.config
    H, dh = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    layers = net.bert.encoder.layer
    w_o = [l.attention.output.dense.weight for l in layers]  # [D, H*dh]
    w_2 = [l.output.dense.weight for l in layers]  # [D, I]
    head = torch.zeros(len(layers), H)
    neuron = torch.zeros(len(layers), cfg.intermediate_size)
    was = net.training
    net.eval()
    for b in batches:
        loss = F.cross_entropy(net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["label"])
        grads = torch.autograd.grad(loss, w_o + w_2)
        for i in range(len(layers)):
            head[i] += (w_o[i] * grads[i]).detach().view(-1, H, dh).sum(dim=(0, 2)).abs()
            neuron[i] += (w_2[i] * grads[len(layers) + i]).detach().sum(dim=0).abs()
    net.train(was)
    return head, neuron


@torch.no_grad()
def reorder_(net: nn.Module, head_importance: torch.Tensor, neuron_importance: torch.Tensor) -> None:
    """Permute every layer's heads and FFN neurons into descending importance, in place."""
    cfg = net.config
    H, dh = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    for i, layer in enumerate(net.bert.encoder.layer):
        order = torch.argsort(head_importance[i], descending=True)
        rows = (order[:, None] * dh + torch.arange(dh)[None, :]).reshape(-1)
        for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
            lin.weight.copy_(lin.weight[rows])
            lin.bias.copy_(lin.bias[rows])
        o = layer.attention.output.dense
        o.weight.copy_(o.weight[:, rows])
        n_order = torch.argsort(neuron_importance[i], descending=True)
        up, down = layer.intermediate.dense, layer.output.dense
        up.weight.copy_(up.weight[n_order])
        up.bias.copy_(up.bias[n_order])
        down.weight.copy_(down.weight[:, n_order])


# ----------------------------------------------------------------------------------------------
# Extraction: a sub-network as its own, smaller Hugging Face model
# ----------------------------------------------------------------------------------------------

def subnet_config(config, s: Shape):
    """The config of the extracted sub-network: ``BertConfig`` when every head is kept, else a
    :class:`~raykd.models.hf_export.PrunedBertConfig` with ``s.heads`` heads of the original head size."""
    from transformers import BertConfig

    from raykd.models.hf_export import PrunedBertConfig

    fields = config.to_dict() | {"num_hidden_layers": len(s.layers), "intermediate_size": s.neurons}
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        fields.pop(key, None)
    if s.heads == config.num_attention_heads:
        cfg = BertConfig(**fields)
    else:
        cfg = PrunedBertConfig(**fields | {"num_attention_heads": s.heads, "attention_head_size": s.head_size})
    cfg._attn_implementation = "eager"  # like every raykd BERT: attention maps can be returned
    return cfg


@torch.no_grad()
def extract_subnetwork(net: nn.Module, width: float, depth: float) -> nn.Module:
    """The (width, depth) sub-network as a standalone, genuinely smaller sequence classifier.

    Kept layers only; in each, the first ``s.heads`` heads (rows of W_Q, W_K, W_V, columns of W_O)
    and the first ``s.neurons`` FFN neurons (rows of W_1, columns of W_2): rewiring sorted both by
    importance. A ``BertForSequenceClassification`` when every head is kept, else a
    ``PrunedBertForSequenceClassification`` (raykd/models/hf_export.py, saved with its code).
    """
    from transformers import BertForSequenceClassification

    from raykd.models.hf_export import PrunedBertConfig, PrunedBertForSequenceClassification

    s = subnet_shape(net.config, width, depth)
    cfg = subnet_config(net.config, s)
    cls = PrunedBertForSequenceClassification if isinstance(cfg, PrunedBertConfig) else BertForSequenceClassification
    sub = cls(cfg).eval()
    for part in ("bert.embeddings", "bert.pooler", "classifier"):
        sub.get_submodule(part).load_state_dict(net.get_submodule(part).state_dict())
    k = s.heads * s.head_size
    for j, l in enumerate(s.layers):
        src, dst = net.bert.encoder.layer[l], sub.bert.encoder.layer[j]
        for name in ("query", "key", "value"):
            _copy_linear(getattr(src.attention.self, name), getattr(dst.attention.self, name), rows=k)
        _copy_linear(src.attention.output.dense, dst.attention.output.dense, cols=k)
        _copy_linear(src.intermediate.dense, dst.intermediate.dense, rows=s.neurons)
        _copy_linear(src.output.dense, dst.output.dense, cols=s.neurons)
        dst.attention.output.LayerNorm.load_state_dict(src.attention.output.LayerNorm.state_dict())
        dst.output.LayerNorm.load_state_dict(src.output.LayerNorm.state_dict())
    return sub


def _copy_linear(src: nn.Linear, dst: nn.Linear, rows: int | None = None, cols: int | None = None) -> None:
    """dst <- src's first ``rows`` output rows (with their biases) and/or its first ``cols`` input columns."""
    dst.weight.copy_(src.weight[:rows, :cols])
    dst.bias.copy_(src.bias[:rows])


def subnetwork_params(net: nn.Module, width: float, depth: float) -> int:
    """Parameters of the (width, depth) sub-network: those of its extracted model."""
    return count_params(extract_subnetwork(net, width, depth))


# ----------------------------------------------------------------------------------------------
# What the Ray Train workers run: adaptive training of every sub-network at once
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdaptiveSpec:
    """What the workers need beyond the TaskSpec (carried in ``TaskSpec.extra["adaptive"]``)."""

    widths: tuple[float, ...]
    depths: tuple[float, ...]
    init_weights: str  # the rewired teacher's weights (safetensors)

    @property
    def subnets(self) -> tuple[tuple[float, float], ...]:
        return tuple((w, d) for d in self.depths for w in self.widths)


class SubnetLoss(nn.Module):
    """The configured objective once per depth (the layer map depends on which layers are kept)."""

    def __init__(self, specs: list[dict], depths: tuple[float, ...], num_layers: int, context: dict):
        super().__init__()
        self.per_depth = nn.ModuleDict()
        for d in depths:
            layer_map = [list(p) for p in depth_layer_map(num_layers, d)]
            with_map = [s | {"layer_map": layer_map} if "hidden_states" in NEEDS.get(s["name"], set()) else dict(s)
                        for s in specs]
            self.per_depth[_key(d)] = WeightedLoss(with_map, context | {"student_layers": len(layer_map) - 1})

    @property
    def teacher_needs(self) -> set[str]:
        return set().union(*(l.teacher_needs for l in self.per_depth.values())) | {"logits"}

    def for_depth(self, depth: float) -> WeightedLoss:
        return self.per_depth[_key(depth)]


def _key(m: float) -> str:
    return f"{m:g}".replace(".", "_")


class DynaBertTask(ClassifyTask):
    """Adaptive training: one forward pass yields every sub-network; the step minimises the sum of
    their distillation losses, so the gradient is the sum of the sub-networks' gradients."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.adaptive: AdaptiveSpec = spec.extra["adaptive"]

    def build_student(self) -> nn.Module:
        net = super().build_student()
        load_weights(net, self.adaptive.init_weights)
        return DynaBert(net)

    def build_loss(self, student: nn.Module, teacher: nn.Module | None = None) -> SubnetLoss:
        net = unwrap(student).net
        context = self.loss_context(net, teacher)
        if teacher is None:
            context |= self.teacher_context()
        return SubnetLoss(self.spec.loss_dicts(), self.adaptive.depths, net.config.num_hidden_layers, context)

    def forward(self, model: nn.Module, batch: dict, needs: set[str] = frozenset(), role: str = "student") -> dict:
        if isinstance(unwrap(model), DynaBert):  # evaluation during training: the full network
            return model(batch["input_ids"], batch["attention_mask"])[0]
        return super().forward(model, batch, needs, role)

    def loss(self, student: nn.Module, loss_fn: SubnetLoss, batch: dict, teacher_out: dict | None):
        outs = student(batch["input_ids"], batch["attention_mask"], self.adaptive.subnets)
        total, logs = 0.0, {}
        for (w, d), out in zip(self.adaptive.subnets, outs):
            value, _ = loss_fn.for_depth(d)(out, teacher_out, batch)
            total = total + value  # sum over sub-networks (gradient accumulation in the paper)
            logs[f"w{w:g}_d{d:g}"] = float(value.detach())
        return total, logs


# ----------------------------------------------------------------------------------------------
# run(): teacher, then per seed rewiring + adaptive training, one results row per sub-network
# ----------------------------------------------------------------------------------------------

def rewire(cfg, task: ClassifyTask, teacher_weights: str, seed: int, out: Path) -> Path:
    """Score heads and neurons on training batches, reorder them, save the rewired network (and its
    head importance) in ``out``."""
    net = load_weights(task.build_student(), teacher_weights)
    arrays = task.load_split("train")
    torch.manual_seed(seed)
    bs = cfg.dynabert.importance_batch_size
    n = min(len(arrays["label"]), cfg.dynabert.importance_batches * bs)
    idx = np.random.default_rng(seed).permutation(len(arrays["label"]))[:n]
    batches = [task.batch(arrays, np.sort(idx[i:i + bs])) for i in range(0, n, bs)]
    head, neuron = importance_scores(net, batches)
    reorder_(net, head, neuron)
    atomic_write_bytes(out / "importance.json", json.dumps({"head_importance": head.tolist()}).encode())
    return save_weights(net, out / "rewired.safetensors")


def train_adaptive(cfg, ctx, base: TaskSpec, seed: int) -> tuple[DynaBert, dict]:
    """The adaptive model of ``seed``: rewired from the teacher and trained on Ray Train (a Train run
    named after its item, so a rerun resumes it), then kept in ``students/adaptive-seed<s>/``, where
    a later rerun loads it instead of training again."""
    item = f"adaptive-seed{seed}"
    out = ctx.students_dir / item
    spec = base.model_copy(update={
        "kind": DynaBertTask, "train": cfg.train.model_copy(update={"seed": cfg.seed + seed}),
        "extra": {"adaptive": AdaptiveSpec(tuple(cfg.dynabert.widths), tuple(cfg.dynabert.depths),
                                           str(out / "rewired.safetensors"))}})
    owner = out / "run_id"  # the run (config) whose adaptive model this directory holds
    if out.exists() and (not owner.exists() or owner.read_text() != ctx.run_id):
        print(f"[raykd] {item}: {out} holds another config's adaptive model; training this run's", flush=True)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(owner, ctx.run_id.encode())
    if (out / "meta.json").exists():  # trained by an earlier attempt of this run
        print(f"[raykd] {item}: trained in an earlier attempt, loaded from {out}", flush=True)
        model = load_weights(DynaBert(build_task(base).build_student()), out / "model.safetensors")
        return model, json.loads((out / "meta.json").read_text())
    if not (out / "rewired.safetensors").exists():
        rewire(cfg, build_task(base), base.teacher.weights, cfg.seed + seed, out)
    subnets = spec.extra["adaptive"].subnets
    print(f"[raykd] {item} ({objective(cfg.losses)}): {len(subnets)} sub-networks, "
          f"{' + '.join(f'{l.weight}*{l.name}' for l in cfg.losses)}", flush=True)
    t0 = time.time()
    result = fit(spec, cfg.engine, ctx.ray_name(item), ctx.storage, label=f"dynabert-{objective(cfg.losses)} seed {seed}",
                 callbacks=ctx.train_callbacks(item))
    model = load_trained(spec, result)
    save_weights(model, out / "model.safetensors")
    meta = {"train_time_s": time.time() - t0, "full_accuracy": result.metrics["accuracy"], "seed": spec.train.seed}
    atomic_write_bytes(out / "meta.json", json.dumps(meta).encode())
    return model, meta


def teacher_row(cfg, ctx, task: ClassifyTask, common: dict) -> dict:
    """The teacher's row, evaluated on this run's test split (the sub-networks' split); recorded once."""
    row = ctx.done("teacher")
    if row is not None:
        return row
    model = load_weights(task.build_student(), task.spec.teacher.weights)
    test = task.load_split("test")
    size = size_report(model, task.example_input(test), latency=False)
    ev = task.evaluate(model, test)
    acc = ev["correct"] / ev["count"]
    row = make_row(method="teacher", item="teacher", student=cfg.teacher.display, params=size["params"], bytes=size["bytes"],
                   macs=size["macs"], accuracy=acc, seed=cfg.teacher.train.seed, teacher_params=size["params"],
                   teacher_bytes=size["bytes"], teacher_macs=size["macs"], teacher_accuracy=acc, **common)
    ctx.record([row])
    print(f"[raykd] teacher {cfg.teacher.display}: test accuracy {row['accuracy']:.4f} on this test split", flush=True)
    return row


def subnet_row(ctx, adaptive: DynaBert, width: float, depth: float, item: str, task: ClassifyTask, **row) -> dict:
    """Extract one sub-network, evaluate it on the test split, save it (``students/<item>``) and
    measure the saved model: its parameters, bytes of its model.safetensors, MACs per example and CPU
    latency (batch of 1, and of 32 test examples); its results row."""
    test = task.load_split("test")
    sub = extract_subnetwork(adaptive.net, width, depth)
    ev = task.evaluate(sub, test)
    out = save_student(sub, ctx.students_dir / item, task)
    example = task.example_input(test)
    batch32 = task.batch(test, np.arange(min(32, len(test["label"]))))
    s = subnet_shape(adaptive.net.config, width, depth)
    extra = row.pop("extra") | {"width": width, "depth": depth, "heads": s.heads, "neurons": s.neurons, "layers": s.layers,
                                "latency_ms": cpu_latency_ms(sub, example),
                                "latency_ms_batch32": cpu_latency_ms(sub, {k: batch32[k] for k in example})}
    return make_row(item=item, student=f"dynabert w{width:g} d{depth:g}", params=count_params(sub),
                    bytes=(out / "model.safetensors").stat().st_size, macs=macs_per_example(sub, example),
                    accuracy=ev["correct"] / ev["count"], extra=extra, **row)


def subnet_item(width: float, depth: float, seed: int, seeds: list[int]) -> str:
    return f"width{width:g}-depth{depth:g}" + (f"-seed{seed}" if len(seeds) > 1 else "")


@register_method("dynabert", settings=DynaBertSettings, check=check,
                 sections={"data": lambda: DataConfig(name="movie_reviews", max_length=32), "teacher": default_teacher,
                           "losses": dynabert_losses, "train": default_train, "engine": None})
def run(cfg, ctx) -> list[dict]:
    """Width/depth-adaptive BERT students (DynaBERT) distilled from a BERT teacher on Ray Train."""
    full = cfg.data.model_copy(update={"train_subset": None, "test_subset": None})  # the teacher is shared with lm_* runs
    teacher = ensure_teacher(full, cfg.teacher, cfg.engine, ctx.storage)
    base = TaskSpec(dataset=cfg.data, student=ModelSpec(name=cfg.teacher.name, args=cfg.teacher.args),
                    teacher=TeacherRef(name=cfg.teacher.name, args=cfg.teacher.args, weights=teacher["weights"]),
                    losses=cfg.losses, train=cfg.train)
    task = build_task(base)
    write_data_description(ctx.out_dir, task.data)
    common = dict(dataset=cfg.data.name, teacher=cfg.teacher.display, a=cfg.metric.a, size=cfg.metric.size,
                  cfg_hash=ctx.run_id.rsplit("-", 1)[-1], eval_split=task.data.eval_split)
    t = teacher_row(cfg, ctx, task, common)
    common |= dict(teacher_params=t["params"], teacher_bytes=t["bytes"], teacher_macs=t["macs"], teacher_accuracy=t["accuracy"])
    label = f"dynabert-{objective(cfg.losses)}"
    for seed in cfg.dynabert.seeds:
        items = {(w, d): subnet_item(w, d, seed, cfg.dynabert.seeds) for d in cfg.dynabert.depths for w in cfg.dynabert.widths}
        todo = {wd: item for wd, item in items.items() if ctx.done(item) is None}
        if not todo:
            print(f"[raykd] seed {seed}: every sub-network done in an earlier attempt", flush=True)
            continue
        adaptive, meta = train_adaptive(cfg, ctx, base, seed)
        adaptive.eval()
        for (w, d), item in todo.items():
            row = subnet_row(ctx, adaptive, w, d, item, task, method=label, wall_time_s=meta["train_time_s"],
                             seed=meta["seed"], **common, extra={"losses": base.loss_dicts(), "epochs": cfg.train.epochs,
                                                                 "train_subset": cfg.data.train_subset})
            ctx.record([row])
            print(f"[raykd] {item}: accuracy {row['accuracy']:.4f} (teacher {t['accuracy']:.4f}), "
                  f"params {row['params']:,}, DS {row['ds']:.4f}", flush=True)
    return ctx.rows().to_dict("records")
