"""Dataset distillation with learned soft labels: the algorithm (plain PyTorch, no Ray).

Sucholutsky & Schonlau (2019), "Improving Dataset Distillation" (soft-label dataset distillation),
building on Wang et al. (2018), "Dataset Distillation".

We learn a tiny synthetic training set -- samples x~, a soft label y~ (a distribution over classes)
for every sample, and one inner learning rate per unrolled step -- such that a network trained only
on it does well on the real test set. It is a bi-level optimisation:

    inner:  theta_{i+1} = theta_i - eta_i * grad_theta l(x~_i, y~_i; theta_i),   i = 0 .. T-1
            l(x~, y~; theta) = -sum_c y~_c log softmax(f(x~; theta))_c          (soft-label cross-entropy)
    outer:  L(x~, y~, eta) = CE(f(x_real; theta_T), y_real)                       (real data, one batch)
            x~, y~, eta <- Adam(grad L)  -- exact second-order gradients through the whole unroll

theta_0 is one fixed initialisation, a fresh random one every outer iteration, or a pretrained
network. Images are distilled in normalised pixel space; text in the frozen MiniLM token-embedding
space (a text CNN learns from embedding sequences, and each synthetic sentence is read back as its
nearest tokens).

This module is the algorithm and its outputs; :mod:`raykd.distill.dataset_ray` runs the outer loop
on Ray Train (data-parallel meta-gradients) and the evaluations as Ray tasks, and
:mod:`raykd.distill.dataset_distill` is the method (``method: dataset_distill``) that ties them together.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.func import functional_call

from raykd import models as M
from raykd.config import DataConfig, ModelSpec
from raykd.data.prepare import prepare
from raykd.errors import UserError
from raykd.schema import FieldError, Strict

Params = dict[str, torch.Tensor]
TEXT_MODELS = ("textcnn",)
DEFAULT_SAMPLES = 10
# fields of the former ``dataset_distill:`` section that live in the shared sections now
MOVED_FIELDS = {"dataset": "data.name", "model": "student.name", "model_args": "student.args",
                "max_tokens": "data.max_length", "num_workers": "engine.num_workers", "use_gpu": "engine.use_gpu",
                "seed": "the top-level seed"}


# ----------------------------------------------------------------------------------------------
# Settings: the method's own section, all defaulted to the paper's fixed-init MNIST recipe (the
# authors' code run with --distill_steps 1 --train_nets_type known_init --static_labels 0
# --random_init_labels 0, and their MNIST runs' E(350, 35, 0.5), distill lr 0.01, lr 0.01): free labels
# initialised one-hot, the whole set as 1 step repeated for 3 epochs, learned inner lrs starting at
# 0.01, Adam(0.01, betas 0.5/0.999) on 1,024 real images per outer iteration, 350 passes over MNIST's
# 60,000 training images (59 iterations each) with the lr halved every 35 passes. Choices made here
# where the paper has none are in the README. The data, the learner (student), the workers (engine)
# and the seed are the shared sections.
# ----------------------------------------------------------------------------------------------

PAPER_PASSES, PAPER_DECAY_PASSES, MNIST_BATCHES_PER_PASS = 350, 35, math.ceil(60_000 / 1024)


class DatasetDistillSettings(Strict):
    """The ``dataset_distill:`` section of a config."""

    num_samples: int | None = Field(None, ge=1, description=f"total synthetic samples (may be fewer than classes); "
                                    f"default {DEFAULT_SAMPLES} unless samples_per_class is given")
    samples_per_class: int | None = Field(None, ge=1, description="if set, num_samples = samples_per_class * classes")
    learn_labels: bool = Field(True, description="learn soft labels (True) or keep fixed one-hot labels (False)")
    label_init: Literal["onehot", "random"] = "onehot"
    label_projection: Literal["softmax", "free"] = Field(
        "free", description="free: raw values, as in the paper (a label may go negative); softmax: labels are "
        "softmax(logits), always valid distributions")
    steps: int = Field(1, ge=1, description="inner gradient steps per epoch over the synthetic set")
    epochs: int = Field(3, ge=1, description="epochs over the synthetic set; T = steps * epochs learned lrs")
    sample_init: Literal["noise", "real"] = Field(
        "noise", description="noise: x~ ~ N(0, s^2) as in the paper; real: start from real samples of each assigned class")
    split_per_step: bool = Field(
        False, description="False: every step uses all samples; True: the set is cut into `steps` disjoint batches")
    init: Literal["fixed", "random", "pretrained"] = "fixed"
    init_scheme: Literal["xavier", "default"] = Field(
        "xavier", description="how theta_0 is drawn: xavier = Xavier-normal weights (gain 1) and zero biases, the "
        "initialisation of the original dataset-distillation code; default = each layer's own PyTorch init")
    pretrained_path: str | None = Field(None, description="safetensors state dict of the student (init: pretrained)")
    outer_iterations: int = Field(PAPER_PASSES * MNIST_BATCHES_PER_PASS, ge=1,
                                  description="outer iterations (real batches); default: the paper's 350 passes over MNIST")
    outer_batch_size: int = Field(1024, ge=1, description="real samples per outer iteration, split over workers")
    outer_lr: float = Field(0.01, gt=0)
    outer_betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_step: int = Field(PAPER_DECAY_PASSES * MNIST_BATCHES_PER_PASS, ge=1,
                               description="outer iterations between learning-rate decays (default: 35 passes over MNIST)")
    lr_decay_factor: float = Field(0.5, gt=0, le=1)
    inner_lr_init: float = Field(0.01, gt=0, description="initial value of every learned inner learning rate")
    eval_inits: int = Field(10, ge=1, description="fresh networks trained on the distilled set per evaluation")
    eval_epochs: int | None = Field(None, ge=1, description="epochs of the learned schedule at evaluation (default: epochs)")
    real_train_steps: int = Field(300, ge=1, description="random-real baseline: full-batch Adam steps")
    real_lr: float = Field(1e-3, gt=0, description="Adam lr for training on real data (baseline and full-set reference)")
    reference_epochs: int = Field(2, ge=0, description="epochs of the full-train-set reference (teacher_accuracy); 0: skip")
    baselines: bool = Field(True, description="also run random real samples and the hard-label variant")
    log_every: int = Field(50, ge=1, description="print progress (with a quick evaluation) every N outer iterations")
    checkpoint_every: int = Field(100, ge=1, description="Ray Train checkpoint of the synthetic set every N outer iterations")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw):
        """Fields that moved to the shared sections say where they went."""
        for key in MOVED_FIELDS:
            if isinstance(raw, dict) and key in raw:
                raise FieldError(key, f"moved: set {MOVED_FIELDS[key]} instead")
        return raw

    @field_validator("outer_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"outer_betas must both lie in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetDistillSettings":
        if self.samples_per_class is not None and self.num_samples is not None:
            raise ValueError("give either num_samples or samples_per_class, not both")
        if self.init == "pretrained" and not self.pretrained_path:
            raise ValueError("init: 'pretrained' needs pretrained_path (a safetensors state dict of the student)")
        if self.pretrained_path and self.init != "pretrained":
            raise ValueError(f"pretrained_path is read only with init: 'pretrained' (init is {self.init!r}); "
                             "remove it or set init: pretrained")
        if self.pretrained_path:  # an existing file, made absolute (sweep trials run in their own directory)
            if not Path(self.pretrained_path).expanduser().is_file():
                raise ValueError(f"pretrained_path: no such file {self.pretrained_path!r}; give a safetensors state dict of the student")
            self.pretrained_path = str(Path(self.pretrained_path).expanduser().resolve())
        if not self.learn_labels and self.label_init == "random":
            raise ValueError("label_init: 'random' needs learn_labels: true (fixed labels are one-hot)")
        return self

    @property
    def total_steps(self) -> int:
        return self.steps * self.epochs

    def sample_count(self, num_classes: int) -> int:
        """Number of synthetic samples N (samples_per_class resolved with the data's class count)."""
        if self.samples_per_class is not None:
            return self.samples_per_class * num_classes
        return DEFAULT_SAMPLES if self.num_samples is None else int(self.num_samples)


@dataclass(frozen=True)
class Recipe:
    """Everything the algorithm reads: the ``dataset_distill:`` settings, the ``data:`` section, the
    learner (the ``student:`` section) and the run's seed. Plain data: it travels to Ray workers and tasks."""

    settings: DatasetDistillSettings
    data: DataConfig
    learner: ModelSpec
    seed: int = 0

    @classmethod
    def of(cls, cfg) -> "Recipe":
        return cls(cfg.dataset_distill, cfg.data, cfg.student, cfg.seed)

    def with_settings(self, **update) -> "Recipe":
        return dataclasses.replace(self, settings=self.settings.model_copy(update=update))


# ----------------------------------------------------------------------------------------------
# Real data, in the learner's input space (normalised pixels, or frozen MiniLM token embeddings)
# ----------------------------------------------------------------------------------------------

@dataclass
class RealData:
    """One run's train and evaluation rows as tensors the learner eats, plus how to read inputs back."""

    kind: str                       # "image" | "text"
    num_classes: int
    train_x: torch.Tensor           # images: float [N, C, H, W] normalised; text: int64 token ids [N, L]
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...] = ()
    eval_split: str = ""            # which rows the accuracies are measured on
    mean: torch.Tensor | None = None    # images: per-channel normalisation [C, 1, 1] of the training rows
    std: torch.Tensor | None = None
    table: torch.Tensor | None = None   # text: frozen MiniLM token-embedding table [V, D]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if self.kind == "text":
            return (self.train_x.shape[1], self.table.shape[1])
        return tuple(self.train_x.shape[1:])

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Real inputs -> learner inputs (text: look the token ids up in the frozen embedding table)."""
        return self.table[x] if self.kind == "text" else x

    def train_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.train_y), (n,), generator=generator)
        return self.inputs(self.train_x[idx]), self.train_y[idx]


def load_real_data(data: DataConfig) -> RealData:
    """The rows of a ``data:`` section (subsets, your own files and their hold-out included, see
    :func:`raykd.data.prepare.prepare`) as tensors; built once per process (Ray workers and tasks call this)."""
    return _load_real_data(json.dumps(data.model_dump(mode="json"), sort_keys=True))


@functools.lru_cache(maxsize=4)
def _load_real_data(key: str) -> RealData:
    d = json.loads(key)
    p = prepare(d)
    names, labels = tuple(p.labels.names), (lambda split: torch.from_numpy(np.asarray(split["label"], dtype=np.int64)))
    if p.kind == "image":
        mean = torch.tensor(p.norm["mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(p.norm["std"], dtype=torch.float32).view(-1, 1, 1)

        def pixels(split: dict) -> torch.Tensor:
            return (torch.from_numpy(np.asarray(split["x"], dtype=np.float32) / 255.0) - mean) / std

        return RealData("image", p.num_classes, pixels(p.train), labels(p.train), pixels(p.test), labels(p.test),
                        names, p.eval_split, mean=mean, std=std)
    tok = M.bert.tokenizer()

    def ids(texts: np.ndarray) -> torch.Tensor:
        return tok(list(texts), padding="max_length", truncation=True, max_length=d["max_length"], return_tensors="pt")["input_ids"]

    return RealData("text", p.num_classes, ids(p.train["text"]), labels(p.train), ids(p.test["text"]), labels(p.test),
                    names, p.eval_split, table=minilm_embedding_table())


@functools.lru_cache(maxsize=1)
def minilm_embedding_table() -> torch.Tensor:
    """The frozen MiniLM-L6 token-embedding table (30522 x 384), read straight from its safetensors."""
    from safetensors import safe_open

    files = sorted(M.bert.minilm_dir().glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                if key.endswith("embeddings.word_embeddings.weight"):
                    return fh.get_tensor(key).float().contiguous()
    raise UserError(f"minilm-l6: no word_embeddings.weight in {M.bert.minilm_dir()}; the MiniLM unpack is broken")


# ----------------------------------------------------------------------------------------------
# The learner as a pure function of its parameters
# ----------------------------------------------------------------------------------------------

def build_learner(learner: ModelSpec, data: RealData) -> nn.Module:
    """Build the learner network. BatchNorm keeps no running statistics (it always normalises with the
    current batch), so the network is a pure function of its parameters: the unrolled inner loop,
    the outer loss and the evaluation all see the same function."""
    args = dict(learner.args)
    if learner.name in TEXT_MODELS and args.get("embed_dim") is None:
        args["embed_dim"] = data.table.shape[1]
    model = M.build(learner.name, "student", num_classes=data.num_classes, **args)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return model.train()


def init_params(model: nn.Module, seed: int, scheme: str = "xavier") -> Params:
    """A fresh initialisation theta_0 of ``model`` drawn with ``seed``: ``xavier`` (Xavier-normal
    weights of every conv/linear layer, gain 1, zero biases; other layers their own init) or
    ``default`` (every layer's own PyTorch init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if scheme == "xavier" and isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight, gain=1.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def load_pretrained(model: nn.Module, path: str) -> Params:
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise UserError(f"dataset_distill.pretrained_path: {path} does not exist")
    state = load_file(str(p))
    names = dict(model.named_parameters())
    missing = [k for k in names if k not in state]
    if missing:
        raise UserError(f"dataset_distill.pretrained_path: {path} lacks parameters {missing[:3]} of the model")
    return {k: state[k].to(names[k].dtype).clone() for k in names}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """l = -mean_n sum_c y_nc log softmax(logits_n)_c  (soft-label cross-entropy)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------------
# The synthetic set: samples x~, labels y~ and positive learning rates eta
# ----------------------------------------------------------------------------------------------

class SyntheticSet(nn.Module):
    """Learnable distilled data. ``labels`` and ``lrs`` are the constrained views of raw parameters:
    y~ = softmax(z) (or z itself when ``projection='free'``), eta = softplus(rho) > 0."""

    def __init__(self, x: torch.Tensor, label_values: torch.Tensor, raw_lrs: torch.Tensor, learn_labels: bool,
                 projection: str):
        super().__init__()
        self.x = nn.Parameter(x)
        self.projection = projection
        if learn_labels:
            self.label_param = nn.Parameter(label_values)
        else:
            self.register_buffer("label_param", label_values)
        self.raw_lrs = nn.Parameter(raw_lrs)

    @classmethod
    def initial(cls, settings: DatasetDistillSettings, data: RealData, n: int, seed: int,
                dtype: torch.dtype = torch.float32) -> "SyntheticSet":
        """Sample i is assigned class i mod C. x~ ~ N(0, s^2) (s = 1 for normalised pixels, the embedding
        table's std for text), or a random real sample of the assigned class; labels start one-hot (or
        random); every eta starts at inner_lr_init."""
        g = torch.Generator().manual_seed(10_007 + seed)
        c = data.num_classes
        assigned = torch.arange(n) % c
        if settings.sample_init == "real":
            picks = [int(torch.nonzero(data.train_y == k).flatten()[torch.randint(int((data.train_y == k).sum()), (1,),
                     generator=g)]) for k in assigned.tolist()]
            x = data.inputs(data.train_x[picks]).to(dtype).clone()
        else:
            scale = float(data.table.std()) if data.kind == "text" else 1.0
            x = torch.randn((n, *data.sample_shape), generator=g, dtype=dtype) * scale
        onehot = F.one_hot(assigned, c).to(dtype)
        if not settings.learn_labels:
            values = onehot
        elif settings.label_init == "onehot":
            # softmax can only approach one-hot: start at probability 0.9 on the assigned class
            values = onehot * math.log(9.0 * (c - 1)) if settings.label_projection == "softmax" else onehot
        else:
            z = torch.randn((n, c), generator=g, dtype=dtype)
            values = z if settings.label_projection == "softmax" else torch.softmax(z, dim=1)
        raw_lrs = torch.full((settings.total_steps,), inv_softplus(settings.inner_lr_init), dtype=dtype)
        return cls(x, values, raw_lrs, settings.learn_labels, settings.label_projection)

    @property
    def labels(self) -> torch.Tensor:
        learned_softmax = isinstance(self.label_param, nn.Parameter) and self.projection == "softmax"
        return torch.softmax(self.label_param, dim=1) if learned_softmax else self.label_param

    @property
    def lrs(self) -> torch.Tensor:
        return F.softplus(self.raw_lrs)  # eta_i = log(1 + exp(rho_i)) > 0


def inv_softplus(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


# ----------------------------------------------------------------------------------------------
# Inner loop (training on the synthetic set, unrolled) and outer loss (on real data)
# ----------------------------------------------------------------------------------------------

def step_batches(n: int, steps: int, split_per_step: bool) -> list[slice]:
    """Which synthetic samples each inner step uses: all of them, or the i-th of `steps` equal chunks."""
    if not split_per_step:
        return [slice(0, n)] * steps
    k = n // steps
    return [slice(i * k, (i + 1) * k) for i in range(steps)]


def unroll(model: nn.Module, theta0: Params, x: torch.Tensor, y: torch.Tensor, lrs: torch.Tensor, steps: int,
           epochs: int, split_per_step: bool = False, create_graph: bool = True) -> Params:
    """theta_{i+1} = theta_i - eta_i * grad l(x~_i, y~_i; theta_i) for i < steps * epochs.

    With ``create_graph`` the whole unroll stays differentiable (exact second-order meta-gradients:
    nothing is detached); without it this is plain training with the learned schedule."""
    theta = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in theta0.items()}
    batches = step_batches(x.shape[0], steps, split_per_step)
    for i in range(steps * epochs):
        b = batches[i % steps]
        inner_loss = soft_cross_entropy(functional_call(model, theta, (x[b],)), y[b])  # l(x~_i, y~_i; theta_i)
        grads = torch.autograd.grad(inner_loss, list(theta.values()), create_graph=create_graph)
        theta = {k: p - lrs[i] * g for (k, p), g in zip(theta.items(), grads)}  # theta_{i+1}
        if not create_graph:
            theta = {k: p.detach().requires_grad_(True) for k, p in theta.items()}
    return theta


def outer_loss(model: nn.Module, theta_T: Params, x_real: torch.Tensor, y_real: torch.Tensor) -> torch.Tensor:
    """L = CE(f(x_real; theta_T), y_real)."""
    return F.cross_entropy(functional_call(model, theta_T, (x_real,)), y_real)


def meta_gradient(model: nn.Module, syn: SyntheticSet, theta0: Params, x_real: torch.Tensor, y_real: torch.Tensor,
                  settings: DatasetDistillSettings) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Outer loss and its exact gradient w.r.t. every learnable tensor of the synthetic set."""
    theta_T = unroll(model, theta0, syn.x, syn.labels, syn.lrs, settings.steps, settings.epochs,
                     settings.split_per_step)
    loss = outer_loss(model, theta_T, x_real, y_real)
    learnable = [p for p in syn.parameters()]
    grads = list(torch.autograd.grad(loss, learnable))
    return loss.detach(), grads



# ----------------------------------------------------------------------------------------------
# Evaluation: train fresh networks only on the distilled data, test on the real test split
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def accuracy(model: nn.Module, theta: Params, data: RealData, limit: int | None = None, batch: int = 1000) -> float:
    x, y = (data.test_x, data.test_y) if limit is None else (data.test_x[:limit], data.test_y[:limit])
    correct = 0
    for i in range(0, len(y), batch):
        logits = functional_call(model, theta, (data.inputs(x[i:i + batch]),))
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return correct / len(y)


def train_on_distilled(model: nn.Module, theta0: Params, distilled: dict[str, torch.Tensor],
                       settings: DatasetDistillSettings) -> Params:
    """Replay the learned schedule (eval_epochs epochs of the `steps` learned steps) from theta0."""
    epochs = settings.eval_epochs or settings.epochs
    lrs = distilled["lrs"]
    if epochs > settings.epochs:  # epochs past the learned ones reuse the last epoch's rates
        lrs = torch.cat([lrs, lrs[-settings.steps:].repeat(epochs - settings.epochs)])
    return unroll(model, theta0, distilled["x"], distilled["labels"], lrs, settings.steps, epochs,
                  settings.split_per_step, create_graph=False)


def train_on_real(model: nn.Module, theta0: Params, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int,
                  batch_size: int | None = None, generator: torch.Generator | None = None) -> Params:
    """Standard training on real samples with hard labels: Adam, full batch (or minibatches)."""
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in theta0.items()}
    opt = torch.optim.Adam(theta.values(), lr=lr)
    for _ in range(steps):
        idx = slice(None) if batch_size is None else torch.randint(len(y), (batch_size,), generator=generator)
        loss = F.cross_entropy(functional_call(model, theta, (x[idx],)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in theta.items()}


def evaluate_distilled(recipe: Recipe, distilled: dict[str, torch.Tensor], init_seed: int | None,
                       limit: int | None = None) -> float:
    """Test accuracy of one fresh network trained only on the distilled set. ``init_seed=None`` uses the
    run's own theta_0 (fixed or pretrained init); an int draws a fresh random init."""
    data = load_real_data(recipe.data)
    model = build_learner(recipe.learner, data)
    theta0 = (starting_params(recipe, model) if init_seed is None
              else init_params(model, init_seed, recipe.settings.init_scheme))
    return accuracy(model, train_on_distilled(model, theta0, distilled, recipe.settings), data, limit)


def evaluate_random_real(recipe: Recipe, n: int, seed: int) -> float:
    """Baseline: n randomly chosen real training samples (hard labels), a fresh init, standard training."""
    settings, data = recipe.settings, load_real_data(recipe.data)
    model = build_learner(recipe.learner, data)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_y), generator=g)[:n]
    theta = train_on_real(model, init_params(model, seed, settings.init_scheme), data.inputs(data.train_x[idx]),
                          data.train_y[idx], settings.real_lr, settings.real_train_steps)
    return accuracy(model, theta, data)


def evaluate_full_train_set(recipe: Recipe) -> float:
    """Reference: the same learner trained on all training rows (Adam, batch 256, reference_epochs)."""
    settings, data = recipe.settings, load_real_data(recipe.data)
    model = build_learner(recipe.learner, data)
    g = torch.Generator().manual_seed(recipe.seed)
    steps = settings.reference_epochs * math.ceil(len(data.train_y) / 256)
    theta0 = starting_params(recipe, model)
    theta = _train_real_minibatches(model, theta0, data, settings.real_lr, steps, g)
    return accuracy(model, theta, data)


def _train_real_minibatches(model: nn.Module, theta0: Params, data: RealData, lr: float, steps: int,
                            g: torch.Generator) -> Params:
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in theta0.items()}
    opt = torch.optim.Adam(theta.values(), lr=lr)
    for _ in range(steps):
        x, y = data.train_batch(256, g)
        loss = F.cross_entropy(functional_call(model, theta, (x,)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in theta.items()}


def starting_params(recipe: Recipe, model: nn.Module) -> Params:
    """The run's theta_0: the fixed init (drawn from the run's seed) or the pretrained weights."""
    if recipe.settings.init == "pretrained":
        return load_pretrained(model, recipe.settings.pretrained_path)
    return init_params(model, recipe.seed, recipe.settings.init_scheme)


# ----------------------------------------------------------------------------------------------
# Outputs: the distilled set (safetensors), a picture of it, nearest-token sentences for text
# ----------------------------------------------------------------------------------------------

def export(syn: SyntheticSet) -> dict[str, torch.Tensor]:
    """The distilled set as plain tensors: samples, labels (distributions or raw) and learning rates."""
    with torch.no_grad():
        return {"x": syn.x.detach().clone(), "labels": syn.labels.detach().clone(), "lrs": syn.lrs.detach().clone()}


def save_distilled(path: Path, distilled: dict[str, torch.Tensor], recipe: Recipe, data: RealData,
                   theta0: Params | None = None) -> Path:
    """Write the distilled set to safetensors. Keys: ``x`` (images: normalised pixels [N,C,H,W];
    text: MiniLM token embeddings [N,L,D]), ``labels`` [N,C], ``lrs`` [steps*epochs], and for a fixed or
    pretrained init the starting weights as ``init.<name>``; metadata says how to replay it."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in distilled.items()}
    if theta0 is not None:
        tensors.update({f"init.{k}": v.detach().contiguous() for k, v in theta0.items()})
    settings = recipe.settings
    meta = {"method": "dataset_distill", "dataset": recipe.data.name, "kind": data.kind, "model": recipe.learner.name,
            "model_args": json.dumps(recipe.learner.args), "steps": str(settings.steps), "epochs": str(settings.epochs),
            "split_per_step": str(settings.split_per_step), "init": settings.init,
            "classes": json.dumps(list(data.class_names)), "input": "minilm-l6 word embeddings"}
    if data.kind == "image":  # per channel, as JSON lists
        mean, std = ([round(float(v), 6) for v in t.flatten()] for t in (data.mean, data.std))
        meta.update({"input": "pixels/255, then (x - mean) / std per channel", "mean": json.dumps(mean), "std": json.dumps(std)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_distilled(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a distilled set written by :func:`save_distilled`: (tensors, metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


def fit_distilled(model: nn.Module, distilled: dict[str, torch.Tensor], steps: int, epochs: int,
                  split_per_step: bool = False, lr: float | None = None) -> nn.Module:
    """Train any ``nn.Module`` in place on a distilled set: the learned rates (or one fixed ``lr``,
    for architectures the rates were not learned for) over ``epochs`` epochs of ``steps`` steps."""
    lrs = distilled["lrs"] if lr is None else torch.full((steps * epochs,), lr)
    if len(lrs) < steps * epochs:
        lrs = torch.cat([lrs, lrs[-steps:].repeat(math.ceil((steps * epochs - len(lrs)) / steps))])
    theta0 = {k: v.detach() for k, v in model.named_parameters()}
    theta = unroll(model, theta0, distilled["x"], distilled["labels"], lrs, steps, epochs, split_per_step,
                   create_graph=False)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(theta[k])
    return model


def plot_images(path: Path, distilled: dict[str, torch.Tensor], data: RealData, title: str) -> Path:
    """PNG grid: each synthetic image with its (soft) label drawn as a bar chart underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    class_names = data.class_names
    x = (distilled["x"] * data.std + data.mean).clamp(0, 1).numpy()
    labels = distilled["labels"].numpy()
    n, c = labels.shape
    cols = min(n, 10)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.6 * cols, 3.2 * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [1.0, 0.6] * rows})
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, k = divmod(i, cols)
        img_ax, bar_ax = axes[2 * r, k], axes[2 * r + 1, k]
        img_ax.imshow(x[i].transpose(1, 2, 0).squeeze(-1) if x.shape[1] == 1 else x[i].transpose(1, 2, 0), cmap="gray")
        img_ax.set_title(f"#{i}: {class_names[int(labels[i].argmax())]}", fontsize=8)
        bar_ax.axis("on")
        bar_ax.bar(range(c), labels[i], color=["tab:red" if v < 0 else "tab:blue" for v in labels[i]])
        bar_ax.set_xticks(range(c))
        bar_ax.set_xticklabels([s[:3] for s in class_names], fontsize=5, rotation=90)
        bar_ax.tick_params(axis="y", labelsize=5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def nearest_tokens(embeddings: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Token id of the nearest table row (cosine similarity) for every synthetic position: [N, L]."""
    e = F.normalize(embeddings.reshape(-1, embeddings.shape[-1]), dim=1)
    t = F.normalize(table, dim=1)
    return (e @ t.T).argmax(dim=1).reshape(embeddings.shape[:-1])


def write_sentences(path: Path, distilled: dict[str, torch.Tensor], data: RealData) -> Path:
    """Decode each synthetic sentence to its nearest MiniLM tokens, one per line with its soft label."""
    tok = M.bert.tokenizer()
    ids = nearest_tokens(distilled["x"], data.table)
    lines = []
    for i, (row, lab) in enumerate(zip(ids.tolist(), distilled["labels"].tolist())):
        dist = ", ".join(f"{name}={v:.2f}" for name, v in zip(data.class_names, lab))
        lines.append(f"#{i} [{dist}] {' '.join(tok.convert_ids_to_tokens(row))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
