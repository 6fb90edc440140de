"""DynaBERT: a width- and depth-adaptive BERT trained by distillation (Hou et al., NeurIPS 2020),
with either DynaBERT's own objective or the CKD objective of Park, Kim, Yang (EMNLP 2021).

One set of weights holds many sub-networks. A sub-network of width multiplier m_w keeps, in every
layer, the first round(m_w * H) attention heads and the first round(m_w * I) FFN neurons; one of
depth multiplier m_d keeps round(m_d * N) of the N layers, dropping every (N / dropped)-th layer
(for N = 12, m_d = 0.75: layers 4, 8, 12 go, as in the paper).

1. Start from the fine-tuned teacher (MiniLM-L6-H384 here; cached by ``ensure_teacher``).
2. Network rewiring: score each head and neuron by the first-order change in the loss when it is
   removed, I = |sum_{w in its output weights} w * dL/dw| (removing head h zeroes its columns of the
   attention output projection W_O; removing neuron j zeroes column j of the FFN output W_2),
   summed over batches; then permute heads and neurons so the most important come first in every
   layer (the function of the full network is unchanged).
3. Adaptive training on the Ray Train engine: every step, every (m_w, m_d) sub-network distils from
   the fixed teacher and the gradients of all sub-networks are summed (Alg. 1 of the paper), with
       DynaBERT: L = lambda1 * SCE(z_s, z_t) + lambda2 * sum_l MSE(h_s^l, h_t^l)  (``kd`` + ``hidden_mse``)
       CKD:      L = KD_T(z_s, z_t) + w1 WR_pair + w2 WR_triple + w3 LTR_pair + w4 LTR_triple
   where a kept layer is matched to the teacher layer at the same original position.
   (The paper trains width first and then width + depth with the width-adaptive model as teacher;
   here both are trained in one stage from the fixed teacher, a simplification for small budgets.)
4. Every sub-network is extracted into its own ``BertForSequenceClassification`` (fewer layers,
   fewer FFN neurons; dropped heads are zero rows/columns because a BERT config has one head size
   derived from the width), evaluated on the test split, saved with ``save_pretrained`` and recorded
   as its own results row whose size is the sub-network's own parameters (dropped heads not counted).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from raykd.config import (DataConfig, DistillConfig, EngineConfig, FieldError, LossSpec, MetricConfig, ModelSpec,
                          Strict, TeacherConfig, TrainConfig)
from raykd.distill.base import METHODS, ClassifyMethod, TaskSpec
from raykd.distill.lm import MINILM_TEACHER_TRAIN
from raykd.engine.checkpoint import load_weights, save_weights, unwrap
from raykd.losses import NEEDS, WeightedLoss

# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------

def _default_teacher() -> TeacherConfig:
    return TeacherConfig(name="minilm-l6", train=TrainConfig(**MINILM_TEACHER_TRAIN))


def _dynabert_losses() -> list[LossSpec]:
    return [LossSpec(name="kd", weight=1.0, temperature=1.0), LossSpec(name="hidden_mse", weight=1.0)]


def _ckd_losses() -> list[LossSpec]:
    """KD at T = 4 plus the four relations, weighted as in benchmarks/lm_distill.py."""
    return [LossSpec(name="kd", weight=1.0, temperature=4.0), LossSpec(name="wr_pair", weight=100.0),
            LossSpec(name="wr_triple", weight=100.0, window=21), LossSpec(name="ltr_pair", weight=100.0),
            LossSpec(name="ltr_triple", weight=10.0)]


class DynaBertSettings(Strict):
    """The ``dynabert:`` section of a config (``{name, method: dynabert, output_dir, dynabert: {...}}``)."""

    data: DataConfig = Field(default_factory=lambda: DataConfig(name="movie_reviews", max_length=32),
                             description="text dataset; train_subset/test_subset apply to adaptive training and evaluation")
    teacher: TeacherConfig = Field(default_factory=_default_teacher,
                                   description="BERT teacher fine-tuned on the full training split (cached)")
    widths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0], min_length=1, description="width multipliers m_w")
    depths: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0], min_length=1, description="depth multipliers m_d")
    loss: Literal["dynabert", "ckd"] = Field("dynabert", description="which objective the sub-networks distil with")
    dynabert_losses: list[LossSpec] = Field(default_factory=_dynabert_losses, min_length=1,
                                            description="DynaBERT's objective: logits (kd, T=1) + hidden-state MSE")
    ckd_losses: list[LossSpec] = Field(default_factory=_ckd_losses, min_length=1,
                                       description="the CKD objective: kd + wr_pair + wr_triple + ltr_pair + ltr_triple")
    importance_batches: int = Field(16, ge=1, description="training batches used to score heads and neurons")
    importance_batch_size: int = Field(32, ge=1)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1, batch_size=32, lr=5e-5, optimizer="adamw",
                                                                   schedule="linear", warmup_fraction=0.1))
    engine: EngineConfig = Field(default_factory=EngineConfig)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="one adaptive model per seed")

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

    @model_validator(mode="after")
    def _check(self):
        if self.teacher.name not in ("minilm-l6", "bert"):
            raise ValueError(f"teacher.name: DynaBERT adapts a BERT teacher (minilm-l6 or bert), got {self.teacher.name!r}")
        from raykd.data import info
        from raykd.distill.lm import bert_shape
        from raykd.losses import LOSSES

        if self.data.name != "user" and info(self.data.name).kind != "text":
            raise ValueError(f"data.name: DynaBERT needs a text dataset, {self.data.name!r} is not one")
        shallowest = kept_count(bert_shape(self.teacher.name, self.teacher.args)["num_layers"], self.depths[0])
        field = "ckd_losses" if self.loss == "ckd" else "dynabert_losses"
        for i, spec in enumerate(self.losses):
            if "layer_map" in spec and "hidden_states" in NEEDS.get(spec["name"], set()):
                raise FieldError(f"{field}.{i}.layer_map", "DynaBERT matches every kept layer to the teacher layer at "
                                 "its original position, so a layer_map is not used; remove it")
            need = getattr(LOSSES.get(spec["name"]), "min_layers", 1)
            if shallowest + 1 < need:
                raise ValueError(f"{field}[{i}]: {spec['name']} needs {need} matched layers, but the shallowest "
                                 f"sub-network (depth {self.depths[0]:g}) has {shallowest} layers + embeddings; "
                                 "raise the smallest depth or drop this loss")
        return self

    @property
    def losses(self) -> list[dict]:
        return [l.as_dict() for l in (self.ckd_losses if self.loss == "ckd" else self.dynabert_losses)]


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


class SubNetwork(nn.Module):
    """A fixed (width, depth) sub-network as a plain ``(input_ids, attention_mask) -> logits`` module
    (for MAC counting and latency)."""

    def __init__(self, adaptive: DynaBert, width: float, depth: float):
        super().__init__()
        self.adaptive, self.width, self.depth = adaptive, width, depth

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.adaptive(input_ids, attention_mask, ((self.width, self.depth),))[0]["logits"]


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
# Extraction: a sub-network as its own Hugging Face model
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def extract_subnetwork(net: nn.Module, width: float, depth: float) -> nn.Module:
    """A standalone ``BertForSequenceClassification`` computing the (width, depth) sub-network.

    Layers and FFN neurons are really removed; dropped heads become zero rows of W_Q, W_K, W_V and
    zero columns of W_O (a BERT config derives one head size from the width, so the head count stays).
    """
    from transformers import BertForSequenceClassification

    s = subnet_shape(net.config, width, depth)
    cfg = copy.deepcopy(net.config)
    cfg.num_hidden_layers, cfg.intermediate_size = len(s.layers), s.neurons
    cfg._attn_implementation = "eager"
    sub = BertForSequenceClassification(cfg).eval()
    sub.bert.embeddings.load_state_dict(net.bert.embeddings.state_dict())
    sub.bert.pooler.load_state_dict(net.bert.pooler.state_dict())
    sub.classifier.load_state_dict(net.classifier.state_dict())
    k = s.heads * s.head_size
    for j, l in enumerate(s.layers):
        src, dst = net.bert.encoder.layer[l], sub.bert.encoder.layer[j]
        for name in ("query", "key", "value"):
            a, b = getattr(src.attention.self, name), getattr(dst.attention.self, name)
            b.weight.zero_()
            b.bias.zero_()
            b.weight[:k] = a.weight[:k]
            b.bias[:k] = a.bias[:k]
        dst.attention.output.dense.weight.zero_()
        dst.attention.output.dense.weight[:, :k] = src.attention.output.dense.weight[:, :k]
        dst.attention.output.dense.bias.copy_(src.attention.output.dense.bias)
        dst.attention.output.LayerNorm.load_state_dict(src.attention.output.LayerNorm.state_dict())
        dst.intermediate.dense.weight.copy_(src.intermediate.dense.weight[: s.neurons])
        dst.intermediate.dense.bias.copy_(src.intermediate.dense.bias[: s.neurons])
        dst.output.dense.weight.copy_(src.output.dense.weight[:, : s.neurons])
        dst.output.dense.bias.copy_(src.output.dense.bias)
        dst.output.LayerNorm.load_state_dict(src.output.LayerNorm.state_dict())
    return sub


def subnetwork_params(net: nn.Module, width: float, depth: float) -> int:
    """Parameters the (width, depth) sub-network uses: its extracted model's minus the dropped heads' slots."""
    from raykd.models.size import count_params

    s = subnet_shape(net.config, width, depth)
    D, H = net.config.hidden_size, net.config.num_attention_heads
    per_head = 3 * (D * s.head_size + s.head_size) + s.head_size * D  # W_Q, W_K, W_V rows + biases, W_O columns
    return count_params(extract_subnetwork(net, width, depth)) - len(s.layers) * (H - s.heads) * per_head


# ----------------------------------------------------------------------------------------------
# The method on the Ray Train engine
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdaptiveSpec:
    """What the workers need beyond the TaskSpec. (Defined here, so unpickling a task that carries it
    imports this module in every worker, which registers the ``dynabert`` method there.)"""

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


class DynaBertMethod(ClassifyMethod):
    """Adaptive training: one forward pass yields every sub-network; the step minimises the sum of
    their distillation losses, so the gradient is the sum of the sub-networks' gradients."""

    def __init__(self, task: TaskSpec):
        super().__init__(task)
        self.spec: AdaptiveSpec = task.extra["adaptive"]

    def build_student(self) -> nn.Module:
        net = super().build_student()
        load_weights(net, self.spec.init_weights)
        return DynaBert(net)

    def build_loss(self, student: nn.Module, teacher: nn.Module | None = None) -> SubnetLoss:
        net = unwrap(student).net
        return SubnetLoss(self.task.losses, self.spec.depths, net.config.num_hidden_layers,
                          self.loss_context(net, teacher))

    def forward(self, model: nn.Module, batch: dict, needs: set[str] = frozenset()) -> dict:
        if isinstance(unwrap(model), DynaBert):  # evaluation during training: the full network
            return model(batch["input_ids"], batch["attention_mask"])[0]
        return super().forward(model, batch, needs)

    def loss(self, student: nn.Module, loss_fn: SubnetLoss, batch: dict, teacher_out: dict | None):
        outs = student(batch["input_ids"], batch["attention_mask"], self.spec.subnets)
        total, logs = 0.0, {}
        for (w, d), out in zip(self.spec.subnets, outs):
            value, _ = loss_fn.for_depth(d)(out, teacher_out, batch)
            total = total + value  # sum over sub-networks (gradient accumulation in the paper)
            logs[f"w{w:g}_d{d:g}"] = float(value.detach())
        return total, logs


METHODS.register("dynabert", DynaBertMethod)


# ----------------------------------------------------------------------------------------------
# run(): teacher, rewiring, adaptive training, one results row per sub-network
# ----------------------------------------------------------------------------------------------

def _teacher_cfg(settings: DynaBertSettings) -> DistillConfig:
    """The ``kd`` config whose teacher we reuse: trained on the full training split, so the teacher
    is shared (cached) with ``lm_*`` configs of the same recipe."""
    data = settings.data.model_copy(update={"train_subset": None, "test_subset": None})
    return DistillConfig(data=data, teacher=settings.teacher, engine=settings.engine, allow_larger_student=True,
                         students=[ModelSpec(name=settings.teacher.name, args=settings.teacher.args)])


def rewire(settings: DynaBertSettings, teacher_weights: str, method: ClassifyMethod, arrays: dict, seed: int,
           out: Path) -> tuple[Path, dict]:
    """Score heads and neurons on training batches, reorder them, save the rewired network."""
    net = method.build_student()
    load_weights(net, teacher_weights)
    rng = np.random.default_rng(seed)
    bs = settings.importance_batch_size
    n = min(len(arrays["label"]), settings.importance_batches * bs)
    idx = rng.permutation(len(arrays["label"]))[:n]
    batches = [method.batch(arrays, np.sort(idx[i:i + bs])) for i in range(0, n, bs)]
    head, neuron = importance_scores(net, batches)
    reorder_(net, head, neuron)
    path = save_weights(net, out / "rewired.safetensors")
    return path, {"head_importance": head.tolist()}


def run(settings: DynaBertSettings, out_dir: str | Path, metric: MetricConfig | None = None,
        name: str = "dynabert") -> pd.DataFrame:
    """Train one adaptive model per seed; returns the results rows (also appended to ``out_dir``)."""
    from raykd.distill.kd import ensure_teacher, save_student
    from raykd.engine.trainer import fit
    from raykd.models.size import cpu_latency_ms, macs_per_example, size_report
    from raykd.report import report
    from raykd.results import append_rows, config_hash, make_row

    metric = metric or MetricConfig()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(settings.engine.storage_path or out / "ray").resolve()
    chash = config_hash(settings.model_dump())
    run_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tcfg = _teacher_cfg(settings)
    teacher = ensure_teacher(tcfg, storage)
    t_spec = {"name": settings.teacher.name, "args": settings.teacher.args, "weights": teacher["weights"]}
    base_task = TaskSpec(dataset=settings.data.model_dump(), student={"name": settings.teacher.name, "args": settings.teacher.args},
                         teacher=t_spec, losses=settings.losses, train=settings.train.model_dump())
    method = ClassifyMethod(base_task)
    test = method.load_split("test")
    train_arrays = method.load_split("train")
    t_model = load_weights(method.build_student(), teacher["weights"])
    example = method.example_input(test)
    t_size = size_report(t_model, example, latency=False)
    t_eval = method.evaluate(t_model, test)
    t_acc = t_eval["correct"] / t_eval["count"]
    teacher_label = settings.teacher.display
    common = dict(dataset=settings.data.name, teacher=teacher_label, teacher_params=t_size["params"],
                  teacher_bytes=t_size["bytes"], teacher_macs=t_size["macs"], teacher_accuracy=t_acc,
                  a=metric.a, size=metric.size, cfg_hash=chash, run_id=run_id, eval_split=method.data.eval_split)
    append_rows(out, [make_row(method="teacher", student=teacher_label, params=t_size["params"], bytes=t_size["bytes"],
                               macs=t_size["macs"], accuracy=t_acc, seed=settings.teacher.train.seed, **common)])
    print(f"[raykd] teacher {teacher_label}: test accuracy {t_acc:.4f} on this test split", flush=True)

    for seed in settings.seeds:
        torch.manual_seed(seed)
        seed_dir = out / f"seed{seed}"
        t0 = time.time()
        init, info = rewire(settings, teacher["weights"], method, train_arrays, seed, seed_dir)
        spec = AdaptiveSpec(tuple(settings.widths), tuple(settings.depths), str(init))
        task = TaskSpec(dataset=settings.data.model_dump(), student=base_task.student, teacher=t_spec,
                        losses=settings.losses, train=settings.train.model_dump() | {"seed": seed},
                        method="dynabert", extra={"adaptive": spec})
        print(f"[raykd] dynabert ({settings.loss}) seed {seed}: {len(spec.subnets)} sub-networks, "
              f"{' + '.join(str(d.get('weight', 1)) + '*' + d['name'] for d in settings.losses)}", flush=True)
        result = fit(task, settings.engine.model_dump(), f"{name}-{settings.loss}-s{seed}-{chash}", storage,
                     label=f"dynabert-{settings.loss}")
        wall = time.time() - t0
        adaptive = DynaBertMethod(task).build_student()
        with result.checkpoint.as_directory() as d:
            load_weights(adaptive, Path(d) / "model.safetensors")
        adaptive.eval()
        rows = []
        for w, d in spec.subnets:
            sub = extract_subnetwork(adaptive.net, w, d)
            ev = method.evaluate(sub, test)
            acc = ev["correct"] / ev["count"]
            params = subnetwork_params(adaptive.net, w, d)
            view = SubNetwork(adaptive, w, d)
            macs = macs_per_example(view, example)
            label = f"dynabert w{w:g} d{d:g}"
            save_student(sub, seed_dir / "students" / f"w{w:g}_d{d:g}", method)
            s = subnet_shape(adaptive.net.config, w, d)
            rows.append(make_row(method=f"dynabert-{settings.loss}", student=label, params=params, bytes=4 * params,
                                 macs=macs, accuracy=acc, wall_time_s=wall, seed=seed, **common,
                                 extra={"width": w, "depth": d, "heads": s.heads, "neurons": s.neurons,
                                        "layers": s.layers, "latency_ms": cpu_latency_ms(view, example),
                                        "saved_params": sum(p.numel() for p in sub.parameters()),
                                        "losses": settings.losses, "epochs": settings.train.epochs,
                                        "train_subset": settings.data.train_subset}))
            print(f"[raykd] {label}: accuracy {acc:.4f} (teacher {t_acc:.4f}), params {params:,}, "
                  f"DS {rows[-1]['ds']:.4f}", flush=True)
        (seed_dir / "importance.json").write_text(json.dumps(info))
        df = append_rows(out, rows)
    df = df[df["run_id"] == run_id]
    report(out, df=df, a=metric.a, size=metric.size)
    return df
