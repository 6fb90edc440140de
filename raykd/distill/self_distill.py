"""Self-distillation and Beta smoothing (``method: self_distill``).

Zhang & Sabuncu, "Self-Distillation as Instance-Specific Label Smoothing" (NeurIPS 2020).

Teacher-student training reads as amortised MAP estimation: the teacher's prediction is an
instance-specific prior over the classes, and label smoothing is the special case of a uniform prior.
The paper's claims, which this module lets you check:

1. **Multi-generation self-distillation** improves accuracy: generation 0 is trained with plain CE;
   generation g >= 1 is a fresh model of the same architecture trained on

       L_g = (1 - alpha) * CE(y, p) + alpha * CE(softmax(z_{g-1} / T), p)      alpha = 0.4, T = 4

   where z_{g-1} are the logits of generation g-1's saved weights (its teacher).
2. **Beta smoothing** gets instance-specific smoothing with no separately trained teacher: keep an EMA
   copy of the model (decay min(1 - 1/(step + 1), 0.999)); in every batch rank the samples by the EMA
   model's p(y|x), draw b ~ Beta(a, 1) (a = 3) for each, sort, give the larger b to the more confident
   samples; target q_i = b_i on y_i and (1 - b_i)/(K - 1) elsewhere;

       L = (1 - alpha) * CE(y, p) + alpha * CE(q, p)                              alpha = 0.6

3. Baselines: CE, label smoothing (eps spread over the other classes), confidence penalty
   (CE - beta * H(p)).

The config's shared sections say what is trained (``data``, ``student``: every model's architecture,
``train``, ``engine``); ``self_distill:`` says which training objectives (``variants``), how many
generations, which seeds, and the objectives' hyper-parameters.

Every trained model is one *item* of the run (``ce-seed0``, ``beta_smoothing-seed1``,
``self_distill-seed0-gen2``): one Ray Train run named after it, its weights saved under
``students/<item>`` and its results row written as soon as it is done. A self-distillation chain
(generation 0 = the CE model, then generations 1..G) is trained in order, each generation taught by the
previous one's saved weights; chains and single models run side by side (``concurrent_runs``). A rerun
of the same command skips the items that have a row and finds each next generation's teacher on disk.

With ``data.validation`` (the shipped configs set it, as the paper's authors held out 5,000 training
images) every model -- each baseline, each generation -- is the epoch with the best accuracy on the
validation rows carved from the training split; generation g's teacher is generation g-1's selected
model, and the test split is read once per model, at the end.

Each model is judged on the evaluation split by accuracy, NLL and ECE (with a reliability diagram),
and its predictive diversity on the training split -- what its student would be trained on -- is
recorded as the next generation's *teacher diversity*.

Text datasets: by default a small MLP learns over frozen MiniLM sentence embeddings (mean-pooled,
computed once and cached); ``text_features: tokens`` trains a BERT student on token ids instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from raykd import data as D
from raykd.cache import entry
from raykd.config import DataConfig, EngineConfig, ModelSpec, TrainConfig
from raykd.data.prepare import prepare, training_rows
from raykd.distill.kd import load_trained, save_student, write_data_description
from raykd.engine.checkpoint import load_weights
from raykd.engine.task import ClassifyTask, TaskSpec, TeacherRef, build_task, load_arrays
from raykd.engine.trainer import cluster_has_gpus, fit
from raykd.errors import UserError
from raykd.method import register_method
from raykd.metrics import classification_metrics, plot_reliability, pool_bins, predictive_diversity, softmax
from raykd.models.size import count_params
from raykd.paths import cache_dir
from raykd.results import make_row
from raykd.schema import FieldError, Strict

Variant = Literal["ce", "label_smoothing", "confidence_penalty", "beta_smoothing", "self_distill"]
VARIANTS: list[str] = ["ce", "label_smoothing", "confidence_penalty", "beta_smoothing", "self_distill"]
MINILM_DIM = 384


# ----------------------------------------------------------------------------------------------
# Settings: the ``self_distill:`` section, and the shared sections' defaults
# ----------------------------------------------------------------------------------------------

class SelfDistillSettings(Strict):
    """``self_distill:`` what is this method's own (defaults: the paper's hyper-parameters)."""

    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS), min_length=1,
                                    description="training objectives; self_distill's generation 0 is the CE model (one run serves both)")
    generations: int = Field(3, ge=1, description="self_distill: generations after generation 0")
    sd_alpha: float = Field(0.4, ge=0, le=1, description="self_distill: weight of CE(softmax(z_{g-1}/T), p)")
    sd_temperature: float = Field(4.0, gt=0, description="self_distill: temperature T of the teacher's logits")
    beta_alpha: float = Field(0.6, ge=0, le=1, description="beta_smoothing: weight of CE(q_beta, p)")
    beta_a: float = Field(3.0, gt=0, description="beta_smoothing: b ~ Beta(a, 1)")
    epsilon: float = Field(0.1, ge=0, lt=1, description="label_smoothing: mass spread over the other classes")
    penalty_beta: float = Field(0.1, ge=0, description="confidence_penalty: CE - beta * H(p)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1,
                             description="one model per variant and seed (each shifted by the top-level seed)")
    ece_bins: int = Field(15, ge=2, le=100)
    text_features: Literal["minilm_mean", "tokens"] = Field(
        "minilm_mean", description="text data: frozen mean-pooled MiniLM sentence embeddings (student: mlp) or token ids (BERT)")
    concurrent_runs: int | None = Field(None, ge=1, description="models trained at once (default: as many as the "
                                        "cluster's CPUs/GPUs fit engine.num_workers x cpus_per_worker)")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw: Any) -> Any:
        """Point the fields of the earlier layout to their new places."""
        moved = {"methods": "self_distill.variants", "data": "data:", "model": "student:", "train": "train:",
                 "engine": "engine:", "max_concurrent_trials": "self_distill.concurrent_runs"}
        for old in moved.keys() & (raw.keys() if isinstance(raw, dict) else set()):
            where = "is now " if "." in moved[old] else "is now the top-level section "
            raise FieldError(old, f"{where}{moved[old]} (see configs/sd_smoke.yaml)")
        return raw

    @field_validator("variants", "seeds")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"entries must be unique, got {v}")
        return v

    def losses(self, variant: str) -> list[dict]:
        """The weighted loss of one variant, composed from the loss registry."""
        if variant == "ce":
            return [{"name": "ce", "weight": 1.0}]
        if variant == "label_smoothing":
            return [{"name": "label_smoothing", "weight": 1.0, "epsilon": self.epsilon}]
        if variant == "confidence_penalty":
            return [{"name": "confidence_penalty", "weight": 1.0, "beta": self.penalty_beta}]
        if variant == "beta_smoothing":   # (1 - alpha) * CE(y, p) + alpha * CE(q_beta, p)
            return [{"name": "ce", "weight": 1.0 - self.beta_alpha},
                    {"name": "beta_smoothing", "weight": self.beta_alpha, "a": self.beta_a}]
        if variant == "self_distill":     # (1 - alpha) * CE(y, p) + alpha * CE(softmax(z_{g-1}/T), p)
            return [{"name": "ce", "weight": 1.0 - self.sd_alpha},
                    {"name": "soft_ce", "weight": self.sd_alpha, "temperature": self.sd_temperature}]
        raise ValueError(f"unknown variant {variant!r}")


# the parameters that only one variant reads
VARIANT_FIELDS = {"generations": "self_distill", "sd_alpha": "self_distill", "sd_temperature": "self_distill",
                  "beta_alpha": "beta_smoothing", "beta_a": "beta_smoothing", "epsilon": "label_smoothing",
                  "penalty_beta": "confidence_penalty"}


def is_text(data: DataConfig) -> bool | None:
    """Whether a registered dataset is text (None for the user's own data: known once it is read)."""
    return None if data.name == "user" else D.info(data.name).kind == "text"


def check(cfg) -> None:
    """Refuse what does not apply: a variant's parameter without the variant, ``train.seed`` (the seeds
    are ``self_distill.seeds``), text settings on image data, a student that cannot read the text features."""
    s = cfg.self_distill
    defaults = SelfDistillSettings()
    for name, variant in VARIANT_FIELDS.items():
        if variant not in s.variants and getattr(s, name) != getattr(defaults, name):
            raise FieldError(f"self_distill.{name}", f"applies to the {variant} variant only, which is not in "
                             f"self_distill.variants {s.variants}; remove it or add {variant}")
    if cfg.train.seed != 0:
        raise FieldError("train.seed", "self_distill trains one model per entry of self_distill.seeds (shifted by "
                         "the top-level seed); set those instead of train.seed")
    text = is_text(cfg.data)
    if text is False and s.text_features != defaults.text_features:
        raise FieldError("self_distill.text_features", f"applies to text data only; {cfg.data.name} holds images")
    if not text:
        return
    if s.text_features == "minilm_mean":
        if cfg.student.name != "mlp" or int(cfg.student.args.get("in_features", 0)) != MINILM_DIM:
            raise FieldError("student", f"over frozen MiniLM sentence embeddings use {{name: mlp, args: {{in_features: "
                             f"{MINILM_DIM}}}}}, or set self_distill.text_features: tokens for a BERT student")
    elif cfg.student.name not in ("bert", "minilm-l6"):
        raise FieldError("student.name", "self_distill.text_features: tokens needs a BERT model (bert or minilm-l6)")


SECTIONS = {
    "data": lambda: DataConfig(name="mnist", train_subset=10000, test_subset=2000),
    "student": lambda: ModelSpec(name="cnn", args={"widths": [16, 32], "hidden": 64}),  # every model's architecture
    "train": lambda: TrainConfig(epochs=3, batch_size=128, lr=3e-3),
    "engine": lambda: EngineConfig(num_workers=1),
}


# ----------------------------------------------------------------------------------------------
# Tasks on the engine: features for text, and Beta smoothing's EMA model
# ----------------------------------------------------------------------------------------------

def sentence_embeddings(texts: np.ndarray, max_length: int = 64, batch_size: int = 128) -> np.ndarray:
    """Mean-pooled MiniLM-L6 sentence embeddings [N, 384] (float32), cached by the texts' hash."""
    key = hashlib.sha256(("\n".join(map(str, texts)) + f"\0{max_length}").encode()).hexdigest()[:16]

    def embed(tmp: Path) -> None:
        from transformers import BertModel

        from raykd.models.bert import minilm_dir, tokenizer

        tok, encoder = tokenizer(), BertModel.from_pretrained(str(minilm_dir())).eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                h = encoder(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(((h * m).sum(1) / m.sum(1).clamp_min(1.0)).numpy().astype(np.float32))
        np.save(tmp / "embeddings.npy", np.concatenate(out) if out else np.zeros((0, MINILM_DIM), np.float32))

    return entry(cache_dir("features", "minilm_mean") / key, embed, lambda d: np.load(d / "embeddings.npy"),
                 what="MiniLM sentence embeddings")


class SelfDistillTask(ClassifyTask):
    """:class:`ClassifyTask` whose text input can be frozen MiniLM sentence embeddings."""

    def _load_split(self, split: str) -> dict[str, np.ndarray]:
        d = self.spec.dataset
        if self.spec.extra.get("text_features") == "minilm_mean":
            # embed the whole split once (cached), then take the same rows prepare() takes
            whole = "test" if split == "test" else "train"  # validation rows are carved from the training split
            full = load_arrays(d.model_copy(update={"train_subset": None, "test_subset": None, "validation": None}), whole)
            if "text" in full:
                arrays = {"x": sentence_embeddings(full["text"], d.max_length), "label": full["label"]}
                if split == "test":
                    if d.test_subset is not None and d.test_subset < len(full["label"]):
                        arrays = D.take(arrays, D.stratified_indices(full["label"], d.test_subset, d.split_seed))
                    return arrays
                train_idx, val_idx = training_rows(full["label"], d.model_dump())
                if split == "val" and val_idx is None:
                    raise ValueError("this run's data has no validation split (data.validation is not set)")
                idx = val_idx if split == "val" else train_idx
                return arrays if idx is None else D.take(arrays, idx)
        return super()._load_split(split)

    def batch(self, arrays: dict, idx: np.ndarray) -> dict[str, torch.Tensor]:
        if "x" in arrays and arrays["x"].dtype == np.float32:  # precomputed features: used as they are
            return {"x": torch.from_numpy(np.ascontiguousarray(arrays["x"][idx])),
                    "label": torch.from_numpy(arrays["label"][idx])}
        return super().batch(arrays, idx)


def ema_decay(step: int) -> float:
    """EMA decay after optimizer step ``step`` (0-based): min(1 - 1/(step + 1), 0.999)."""
    return min(1.0 - 1.0 / (step + 1), 0.999)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta; buffers (BatchNorm statistics) are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


class BetaSmoothingTask(SelfDistillTask):
    """Beta smoothing: the student's own EMA copy plays the teacher whose confidence ranks the batch.

    The EMA model is a submodule of the loss, so the engine moves it to the device and saves and
    restores it with every checkpoint.
    """

    def build_loss(self, student: nn.Module, teacher: nn.Module | None = None):
        loss_fn = super().build_loss(student, teacher)
        ema = copy.deepcopy(student).eval()
        ema.requires_grad_(False)
        loss_fn.add_module("ema", ema)
        self.ema = ema
        return loss_fn

    def loss(self, student: nn.Module, loss_fn, batch: dict, teacher_out: dict | None):
        with torch.no_grad():
            ema_out = self.forward(self.ema, batch)  # the EMA model's p(y|x) ranks the samples
        return super().loss(student, loss_fn, batch, ema_out)

    def after_step(self, student: nn.Module, step: int) -> None:
        ema_update(self.ema, student, ema_decay(step))


# ----------------------------------------------------------------------------------------------
# The plan: which models, in which order
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One model to train: ``name`` is its item (row key, Ray Train run, ``students/<name>``)."""

    name: str
    variant: str                 # the objective it is trained with
    seed: int                    # its entry of self_distill.seeds
    label: str                   # the results row's ``method``: ce, beta_smoothing, self_distill/g2, ...
    generation: int | None = None
    teacher: str | None = None   # the item whose saved weights teach it (generation g-1)


def plan(s: SelfDistillSettings) -> list[list[Item]]:
    """Lanes of items: a lane is trained in order (a self-distillation chain: generation 0 = CE, then
    1..G), lanes side by side. Chains come first (they are the longest); a separate CE model is not
    trained when a chain's generation 0 already is that model."""
    lanes: list[list[Item]] = []
    if "self_distill" in s.variants:
        for seed in s.seeds:
            chain = [Item(f"ce-seed{seed}", "ce", seed, "ce", generation=0)]
            for g in range(1, s.generations + 1):
                chain.append(Item(f"self_distill-seed{seed}-gen{g}", "self_distill", seed, f"self_distill/g{g}", g,
                                  teacher=chain[-1].name))
            lanes.append(chain)
    for v in s.variants:
        if v != "self_distill" and not (v == "ce" and "self_distill" in s.variants):
            lanes += [[Item(f"{v}-seed{seed}", v, seed, v)] for seed in s.seeds]
    return lanes


# ----------------------------------------------------------------------------------------------
# One model: train on the engine, save, judge, record
# ----------------------------------------------------------------------------------------------

def make_task(cfg, variant: str, seed: int, teacher_weights: str | None = None) -> TaskSpec:
    """The engine's description of one model's training (generation g's teacher: g-1's weights)."""
    s = cfg.self_distill
    teacher = TeacherRef(name=cfg.student.name, args=cfg.student.args, weights=teacher_weights) if teacher_weights else None
    return TaskSpec(dataset=cfg.data, student=cfg.student, teacher=teacher, losses=s.losses(variant),
                    train=cfg.train.model_copy(update={"seed": int(seed)}),
                    kind=BetaSmoothingTask if variant == "beta_smoothing" else SelfDistillTask,
                    extra={"text_features": s.text_features})


def judge(task: TaskSpec, weights: str | Path, n_bins: int = 15) -> dict[str, Any]:
    """Test accuracy, NLL, ECE, reliability bins and diversity; diversity on the training split too.
    Called once per model, on the model its run selected (with ``data.validation``: its best validation
    epoch), after training: nothing is chosen by these figures."""
    t = build_task(task)
    model = load_weights(t.build_student(), weights)
    test = t.load_split("test")
    out = classification_metrics(t.predict_logits(model, test), test["label"], n_bins)
    train = t.load_split("train")
    div = predictive_diversity(softmax(t.predict_logits(model, train)), train["label"])
    out.update({f"train_{k}": v for k, v in div.items()})
    out["params"] = count_params(model)
    return out


def teacher_of(row: dict, weights: Path) -> dict:
    """What generation g needs of generation g-1: its saved weights, and the figures its row records."""
    if not (weights / "model.safetensors").is_file():
        raise UserError(f"{weights}: the saved weights of {row['item']} (the next generation's teacher) are missing; "
                        "rerun with --fresh to train the chain again")
    extra = json.loads(row["extra"])
    return {"item": row["item"], "label": row["method"], "weights": str(weights), "accuracy": float(row["accuracy"]),
            "params": float(row["params"]), **{k: extra[f"train_{k}"] for k in ("mean_entropy", "nontarget_std", "true_prob_std")}}


DIVERSITY = ("mean_entropy", "nontarget_std", "true_prob_mean", "true_prob_std")


def selection_of(cfg, trained: dict) -> dict:
    """How the judged model was chosen (``trained``: the engine's final metrics): the best validation epoch
    (the test split read once, at the end) with ``data.validation``, else the last epoch."""
    if not cfg.data.validation:
        return {"eval_protocol": "last epoch", "selected_epoch": cfg.train.epochs}
    return {"eval_protocol": f"best of {cfg.train.epochs} epochs on {cfg.data.validation} validation rows carved from "
                             "training; test read once, at the end",
            **{k: trained[k] for k in ("selected_epoch", "val_accuracy", "val_nll", "val_accuracy_by_epoch")},
            **({"val_nll_by_epoch": trained["val_nll_by_epoch"]} if "val_nll_by_epoch" in trained else {})}


def result_row(cfg, ctx, item: Item, task: TaskSpec, m: dict, teacher: dict | None, wall: float,
               trained: dict | None = None) -> dict:
    t = teacher or {}
    extra = {"variant": item.variant, "generation": item.generation, "seed_entry": item.seed, "nll": m["nll"],
             "ece": m["ece"], "ece_bins": cfg.self_distill.ece_bins, "reliability": m["reliability"],
             "losses": task.loss_dicts(), "epochs": cfg.train.epochs, **selection_of(cfg, trained or {}),
             **{k: m[k] for k in DIVERSITY}, **{f"train_{k}": m[f"train_{k}"] for k in DIVERSITY}}
    if t:
        extra.update({"teacher_item": t["item"], "teacher_weights": t["weights"], "teacher_mean_entropy": t["mean_entropy"],
                      "teacher_nontarget_std": t["nontarget_std"], "teacher_true_prob_std": t["true_prob_std"]})
    return make_row(method=item.label, item=item.name, dataset=cfg.data.name, student=cfg.student.display,
                    params=m["params"], accuracy=m["accuracy"], teacher=t.get("label", ""), teacher_params=t.get("params"),
                    teacher_accuracy=t.get("accuracy"), a=cfg.metric.a, size=cfg.metric.size, wall_time_s=wall,
                    seed=task.train.seed, cfg_hash=ctx.run_id.rsplit("-", 1)[-1],
                    eval_split=prepare(cfg.data).eval_split, extra=extra)


def train_item(cfg, ctx, item: Item, teacher: dict | None) -> dict:
    """Train one model with :func:`fit`, save it under ``students/<item>``, judge it, record its row."""
    task = make_task(cfg, item.variant, cfg.seed + item.seed, teacher["weights"] if teacher else None)
    print(f"[raykd] self_distill: training {item.name}"
          + (f", teacher {teacher['item']} (acc {teacher['accuracy']:.4f})" if teacher else ""), flush=True)
    t0 = time.time()
    result = fit(task, cfg.engine.resolved(concurrent=True), ctx.ray_name(item.name), ctx.storage, label=item.name,
                 callbacks=ctx.train_callbacks(item.name))
    wall = time.time() - t0
    saved = save_student(load_trained(task, result), ctx.students_dir / item.name, build_task(task))
    m = judge(task, saved, cfg.self_distill.ece_bins)
    row = result_row(cfg, ctx, item, task, m, teacher, wall, result.metrics)
    ctx.record([row])
    chosen = f", epoch {result.metrics['selected_epoch']} (val acc {result.metrics['val_accuracy']:.4f})" \
        if cfg.data.validation else ""
    print(f"[raykd] self_distill: {item.name}: acc {m['accuracy']:.4f} nll {m['nll']:.4f} ece {m['ece']:.4f} "
          f"entropy {m['mean_entropy']:.3f}{chosen} ({wall:.0f}s)", flush=True)
    return row


def run_lane(cfg, ctx, lane: list[Item]) -> None:
    """Train a lane's items in order, skipping those an earlier attempt finished; generation g is taught
    by generation g-1's weights as saved under ``students/``."""
    previous = None
    for item in lane:
        teacher = teacher_of(previous, ctx.students_dir / item.teacher) if item.teacher else None
        previous = ctx.done(item.name)
        if previous is not None:
            print(f"[raykd] self_distill: {item.name}: done in an earlier attempt", flush=True)
            continue
        previous = train_item(cfg, ctx, item, teacher)


def concurrency(cfg, lanes: int) -> int:
    """Models trained at once: ``concurrent_runs``, else as many as the cluster's CPUs (and GPUs) fit."""
    import ray

    if cfg.self_distill.concurrent_runs:
        return min(lanes, cfg.self_distill.concurrent_runs)
    e, res = cfg.engine.resolved(concurrent=True), ray.cluster_resources()
    fit_in = int(res.get("CPU", 1) // (e.num_workers * e.cpus_per_worker))
    if e.use_gpu or (e.use_gpu is None and cluster_has_gpus()):
        fit_in = min(fit_in, int(res.get("GPU", 0) // e.num_workers))
    return max(1, min(lanes, fit_in))


def run_lanes(cfg, ctx, lanes: list[list[Item]], n: int) -> list[Exception]:
    """Every lane, ``n`` at a time (driver threads, each waiting on its Ray Train runs); a failed lane
    does not stop the others. Returns the failures."""
    def attempt(lane: list[Item]) -> Exception | None:
        try:
            run_lane(cfg, ctx, lane)
        except Exception as e:  # noqa: BLE001 - reported, and raised after the other lanes finish
            print(f"[raykd] self_distill: {lane[0].name}...: failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                  flush=True)
            return e
        return None

    if n == 1:
        outcomes = [attempt(lane) for lane in lanes]
    else:
        with ThreadPoolExecutor(n, thread_name_prefix="self_distill") as pool:
            outcomes = list(pool.map(attempt, lanes))
    return [e for e in outcomes if e is not None]


# ----------------------------------------------------------------------------------------------
# Tables and plots from the results rows
# ----------------------------------------------------------------------------------------------

METHOD_ORDER = ["ce", "label_smoothing", "confidence_penalty", "beta_smoothing"]
METRIC_COLUMNS = ["method", "generation", "seed", "accuracy", "nll", "ece", "mean_entropy", "nontarget_std",
                  "train_mean_entropy", "train_nontarget_std", "teacher", "teacher_accuracy",
                  "teacher_mean_entropy", "teacher_nontarget_std", "selected_epoch", "val_accuracy", "wall_time_s"]


def metrics_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per trained model (from its results row): the numbers the paper judges by, plus its
    teacher's diversity."""
    lines = []
    for _, r in rows.iterrows():
        ex = json.loads(r["extra"])
        teacher = r["teacher"] if isinstance(r["teacher"], str) else ""
        lines.append({"method": r["method"], "generation": ex.get("generation"), "seed": int(r["seed"]),
                      "accuracy": r["accuracy"], "wall_time_s": r["wall_time_s"], "teacher": teacher,
                      "teacher_accuracy": r["teacher_accuracy"] if teacher else math.nan,
                      **{k: ex[k] for k in ("nll", "ece", "mean_entropy", "nontarget_std", "train_mean_entropy", "train_nontarget_std")},
                      **{k: ex.get(k, math.nan) for k in ("teacher_mean_entropy", "teacher_nontarget_std", "selected_epoch",
                                                          "val_accuracy")}})
    df = pd.DataFrame(lines, columns=METRIC_COLUMNS)
    df["generation"] = df["generation"].astype("Int64")
    rank = df["method"].map(lambda v: METHOD_ORDER.index(v) if v in METHOD_ORDER else len(METHOD_ORDER))
    order = pd.DataFrame({"r": rank, "g": df["generation"].fillna(-1), "s": df["seed"]}).sort_values(["r", "g", "s"]).index
    return df.loc[order].reset_index(drop=True)


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds, one line per method/generation."""
    cols = ["accuracy", "nll", "ece", "mean_entropy", "train_mean_entropy", "teacher_mean_entropy", "teacher_nontarget_std"]
    g = metrics.groupby("method", sort=False)[cols]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=0).add_suffix("_std")).join(g.size().rename("seeds"))
    return out.reset_index()


def write_tables(cfg, out_dir: Path, rows: pd.DataFrame) -> None:
    """``self_distill_metrics.csv``, ``self_distill_summary.csv`` and ``reliability.png`` in ``out_dir``."""
    metrics = metrics_table(rows)
    metrics.to_csv(out_dir / "self_distill_metrics.csv", index=False)
    summary = summarise(metrics)
    summary.to_csv(out_dir / "self_distill_summary.csv", index=False)
    bins = {label: pool_bins([json.loads(e)["reliability"] for e in rows.loc[rows["method"] == label, "extra"]])
            for label in summary["method"]}
    plot_reliability(bins, out_dir / "reliability.png", title=f"{cfg.data.name}: reliability (pooled over seeds)")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary[["method", "seeds", "accuracy_mean", "accuracy_std", "nll_mean", "ece_mean",
                       "mean_entropy_mean", "teacher_mean_entropy_mean"]].round(4).to_string(index=False), flush=True)
    print(f"[raykd] self_distill: results in {out_dir} (results.csv, self_distill_metrics.csv, "
          f"self_distill_summary.csv, reliability.png)", flush=True)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

@register_method("self_distill", settings=SelfDistillSettings, check=check, sections=SECTIONS)
def run(cfg, ctx) -> list[dict]:
    """Multi-generation self-distillation and Beta smoothing (Zhang & Sabuncu 2020) on Ray Train."""
    s = cfg.self_distill
    data = prepare(cfg.data)
    write_data_description(ctx.out_dir, data)
    if s.text_features == "minilm_mean" and data.kind == "text":  # embed the sentences once, before the runs
        task = build_task(make_task(cfg, "ce", 0))
        for split in ("train", "val", "test") if cfg.data.validation else ("train", "test"):
            task.load_split(split)
    lanes = plan(s)
    n = concurrency(cfg, len(lanes))
    print(f"[raykd] self_distill: {sum(map(len, lanes))} models in {len(lanes)} lanes ({', '.join(s.variants)} x "
          f"seeds {s.seeds}), {n} at a time, on {cfg.data.name}", flush=True)
    failures = run_lanes(cfg, ctx, lanes, n)
    rows = ctx.rows()
    if len(rows):
        write_tables(cfg, ctx.out_dir, rows)
    if failures:
        print(f"[raykd] self_distill: {len(failures)} of {len(lanes)} lanes failed", flush=True)
        raise failures[0]
    return rows.to_dict("records")
