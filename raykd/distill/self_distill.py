"""Self-distillation and Beta smoothing (``method: self_distill``).

Zhang & Sabuncu, "Self-Distillation as Instance-Specific Label Smoothing" (NeurIPS 2020).

Teacher-student training reads as amortised MAP estimation: the teacher's prediction is an
instance-specific prior over the classes, and label smoothing is the special case of a uniform prior.
The paper's claims, which this module lets you check:

1. **Multi-generation self-distillation** improves accuracy: generation 0 is trained with plain CE;
   generation g >= 1 is a fresh model of the same architecture trained on

       L_g = (1 - alpha) * CE(y, p) + alpha * CE(softmax(z_{g-1} / T), p)      alpha = 0.4, T = 4

   where z_{g-1} are the logits of generation g-1's checkpoint (its teacher).
2. **Beta smoothing** gets instance-specific smoothing with no separately trained teacher: keep an EMA
   copy of the model (decay min(1 - 1/(step + 1), 0.999)); in every batch rank the samples by the EMA
   model's p(y|x), draw b ~ Beta(a, 1) (a = 3) for each, sort, give the larger b to the more confident
   samples; target q_i = b_i on y_i and (1 - b_i)/(K - 1) elsewhere;

       L = (1 - alpha) * CE(y, p) + alpha * CE(q, p)                              alpha = 0.6

3. Baselines: CE, label smoothing (eps spread over the other classes), confidence penalty
   (CE - beta * H(p)).

Every model trains through :func:`raykd.engine.trainer.fit` (a Ray Train ``TorchTrainer``); seeds x
methods fan out as Ray Tune trials (a ``Tuner`` over a function trainable that launches the
``TorchTrainer`` runs and takes ~0 CPU itself; a self-distillation trial runs its generations one
after another). Each trained model is judged on the test split by accuracy, NLL and ECE (with a
reliability diagram), and its predictive diversity on the training split -- what its student would be
trained on -- is recorded as the next generation's *teacher diversity*.

Text datasets: by default a small MLP learns over frozen MiniLM sentence embeddings (mean-pooled,
computed once and cached); ``text_features: tokens`` trains a BERT student on token ids instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from raykd import data as D
from raykd.cache import entry
from raykd.config import DataConfig, EngineConfig, ModelSpec, Strict, TrainConfig
from raykd.data.prepare import prepare
from raykd.distill.base import METHODS, ClassifyMethod, TaskSpec, build_method, load_arrays
from raykd.engine.checkpoint import load_weights, save_weights
from raykd.engine.trainer import fit
from raykd.metrics import classification_metrics, plot_reliability, pool_bins, predictive_diversity, softmax
from raykd.models.size import count_params
from raykd.paths import atomic_write_bytes, cache_dir
from raykd.results import append_rows, config_hash, make_row
from raykd.runtime import init_ray

MethodName = Literal["ce", "label_smoothing", "confidence_penalty", "beta_smoothing", "self_distill"]
ALL_METHODS: list[str] = ["ce", "label_smoothing", "confidence_penalty", "beta_smoothing", "self_distill"]
MINILM_DIM = 384


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------

class SelfDistillSettings(Strict):
    """The ``self_distill:`` section of a config (defaults: the paper's hyper-parameters)."""

    data: DataConfig = Field(default_factory=lambda: DataConfig(name="mnist", train_subset=10000, test_subset=2000))
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name="cnn", args={"widths": [16, 32], "hidden": 64}),
                             description="architecture of every model (all generations share it)")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3, batch_size=128, lr=3e-3))
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(num_workers=1),
                                 description="Ray Train engine of each model's run (1 worker: trials run side by side)")
    methods: list[MethodName] = Field(default_factory=lambda: list(ALL_METHODS), min_length=1,
                                      description="self_distill's generation 0 is the CE model (one run serves both)")
    generations: int = Field(3, ge=1, description="self-distillation generations after generation 0")
    sd_alpha: float = Field(0.4, ge=0, le=1, description="self-distillation: weight of CE(softmax(z_{g-1}/T), p)")
    sd_temperature: float = Field(4.0, gt=0, description="self-distillation: temperature T of the teacher's logits")
    beta_alpha: float = Field(0.6, ge=0, le=1, description="Beta smoothing: weight of CE(q_beta, p)")
    beta_a: float = Field(3.0, gt=0, description="Beta smoothing: b ~ Beta(a, 1)")
    epsilon: float = Field(0.1, ge=0, lt=1, description="label smoothing: mass spread over the other classes")
    penalty_beta: float = Field(0.1, ge=0, description="confidence penalty: CE - beta * H(p)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    ece_bins: int = Field(15, ge=2, le=100)
    text_features: Literal["minilm_mean", "tokens"] = Field(
        "minilm_mean", description="text data: frozen mean-pooled MiniLM sentence embeddings (model: mlp) or token ids (BERT)")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Tune trials at once (default: CPUs / CPUs per run)")

    @field_validator("methods", "seeds")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"entries must be unique, got {v}")
        return v

    @model_validator(mode="after")
    def _model_fits_data(self):
        from raykd import data

        if self.data.name == "user" or data.info(self.data.name).kind != "text":
            return self
        if self.text_features == "minilm_mean":
            if self.model.name != "mlp" or int(self.model.args.get("in_features", 0)) != MINILM_DIM:
                raise ValueError(f"model: over frozen MiniLM sentence embeddings use {{name: mlp, args: {{in_features: "
                                 f"{MINILM_DIM}}}}}, or set text_features: tokens for a BERT student")
        elif self.model.name not in ("bert", "minilm-l6"):
            raise ValueError("model.name: text_features: tokens needs a BERT model (bert or minilm-l6)")
        return self

    def losses(self, method: str) -> list[dict]:
        """The weighted loss of one method, composed from the loss registry."""
        if method == "ce":
            return [{"name": "ce", "weight": 1.0}]
        if method == "label_smoothing":
            return [{"name": "label_smoothing", "weight": 1.0, "epsilon": self.epsilon}]
        if method == "confidence_penalty":
            return [{"name": "confidence_penalty", "weight": 1.0, "beta": self.penalty_beta}]
        if method == "beta_smoothing":   # (1 - alpha) * CE(y, p) + alpha * CE(q_beta, p)
            return [{"name": "ce", "weight": 1.0 - self.beta_alpha},
                    {"name": "beta_smoothing", "weight": self.beta_alpha, "a": self.beta_a}]
        if method == "self_distill":     # (1 - alpha) * CE(y, p) + alpha * CE(softmax(z_{g-1}/T), p)
            return [{"name": "ce", "weight": 1.0 - self.sd_alpha},
                    {"name": "soft_ce", "weight": self.sd_alpha, "temperature": self.sd_temperature}]
        raise ValueError(f"unknown method {method!r}")


# ----------------------------------------------------------------------------------------------
# Methods on the engine: features for text, and Beta smoothing's EMA model
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


class SelfDistillMethod(ClassifyMethod):
    """:class:`ClassifyMethod` whose text input can be frozen MiniLM sentence embeddings."""

    def _load_split(self, split: str) -> dict[str, np.ndarray]:
        if self.task.extra.get("text_features") == "minilm_mean":
            # embed the whole split once (cached), then take the same stratified subset load_arrays takes
            full = load_arrays({**self.task.dataset, "train_subset": None, "test_subset": None}, split)
            if "text" in full:
                arrays = {"x": sentence_embeddings(full["text"], int(self.task.dataset.get("max_length", 64))),
                          "label": full["label"]}
                subset = self.task.dataset.get("train_subset" if split == "train" else "test_subset")
                if subset is not None and subset < len(full["label"]):
                    seed = int(self.task.dataset.get("split_seed") or 0)  # the subset raykd.data.prepare takes
                    arrays = D.take(arrays, D.stratified_indices(full["label"], subset, seed))
                return arrays
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


class BetaSmoothingMethod(SelfDistillMethod):
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


METHODS.register("self_distill", SelfDistillMethod)
METHODS.register("beta_smoothing", BetaSmoothingMethod)


# ----------------------------------------------------------------------------------------------
# One model: train on the engine, save, judge
# ----------------------------------------------------------------------------------------------

def make_task(settings: SelfDistillSettings, method: str, seed: int, teacher_weights: str | None = None) -> TaskSpec:
    """The engine's description of one model's training (generation g's teacher: g-1's weights)."""
    model = {"name": settings.model.name, "args": dict(settings.model.args)}
    return TaskSpec(dataset=settings.data.model_dump(), student=model,
                    teacher={**model, "weights": teacher_weights} if teacher_weights else None,
                    losses=settings.losses(method), train=settings.train.model_dump() | {"seed": int(seed)},
                    method="beta_smoothing" if method == "beta_smoothing" else "self_distill",
                    extra={"text_features": settings.text_features})


def judge(task: TaskSpec, weights: str | Path, n_bins: int = 15) -> dict[str, Any]:
    """Test accuracy, NLL, ECE, reliability bins and diversity; diversity on the training split too."""
    method = build_method(task)
    model = load_weights(method.build_student(), weights)
    test = method.load_split("test")
    out = classification_metrics(method.predict_logits(model, test), test["label"], n_bins)
    train = method.load_split("train")
    div = predictive_diversity(softmax(method.predict_logits(model, train)), train["label"])
    out.update({f"train_{k}": v for k, v in div.items()})
    out["params"] = count_params(model)
    return out


def train_model(settings: SelfDistillSettings, method: str, seed: int, out_dir: Path, storage: Path, run_tag: str,
                generation: int | None = None, teacher: dict | None = None) -> dict[str, Any]:
    """Train one model with :func:`fit`, save its weights under ``out_dir/models`` and judge it."""
    label = method if generation is None else ("ce" if generation == 0 else f"self_distill/g{generation}")
    loss_method = "ce" if generation == 0 else method
    task = make_task(settings, loss_method, seed, teacher["weights"] if teacher else None)
    slug = label.replace("/", "-")
    print(f"[raykd] self_distill: training {label} (seed {seed})"
          + (f", teacher {teacher['label']} (acc {teacher['accuracy']:.4f})" if teacher else ""), flush=True)
    t0 = time.time()
    # The class travels in the workers' config so that unpickling it imports this module, which
    # registers the "self_distill" and "beta_smoothing" methods there.
    result = fit(task, settings.engine.model_dump(), f"{run_tag}-{slug}-s{seed}", storage, label=f"{label} s{seed}",
                 extra_config={"method_class": METHODS.get(task.method)})
    wall = time.time() - t0
    weights = out_dir / "models" / f"{slug}-s{seed}.safetensors"
    model = build_method(task).build_student()
    with result.checkpoint.as_directory() as d:
        load_weights(model, Path(d) / "model.safetensors")
    save_weights(model, weights)
    metrics = judge(task, weights, settings.ece_bins)
    print(f"[raykd] self_distill: {label} seed {seed}: acc {metrics['accuracy']:.4f} nll {metrics['nll']:.4f} "
          f"ece {metrics['ece']:.4f} entropy {metrics['mean_entropy']:.3f} ({wall:.0f}s)", flush=True)
    return {"label": label, "method": method, "generation": generation, "seed": seed, "weights": str(weights),
            "teacher": teacher, "losses": task.losses, "wall_time_s": wall, **metrics}


def self_distill_chain(settings: SelfDistillSettings, seed: int, out_dir: Path, storage: Path, run_tag: str) -> list[dict]:
    """Generation 0 with CE, then generations 1..G, each taught by the previous generation's checkpoint."""
    models = [train_model(settings, "self_distill", seed, out_dir, storage, run_tag, generation=0)]
    for g in range(1, settings.generations + 1):
        prev = models[-1]
        teacher = {"label": prev["label"], "weights": prev["weights"], "accuracy": prev["accuracy"], "params": prev["params"],
                   "mean_entropy": prev["train_mean_entropy"], "nontarget_std": prev["train_nontarget_std"],
                   "true_prob_std": prev["train_true_prob_std"]}
        models.append(train_model(settings, "self_distill", seed, out_dir, storage, run_tag, generation=g, teacher=teacher))
    return models


def run_job(settings: SelfDistillSettings, method: str, seed: int, out_dir: Path, storage: Path, run_tag: str) -> list[dict]:
    """One Tune trial's work: a self-distillation chain, or one model of another method."""
    if method == "self_distill":
        return self_distill_chain(settings, seed, out_dir, storage, run_tag)
    return [train_model(settings, method, seed, out_dir, storage, run_tag)]


def jobs_of(settings: SelfDistillSettings) -> list[dict]:
    """(method, seed) trials, self-distillation chains first (they are the longest); a separate CE
    trial is dropped when a chain's generation 0 already is that CE model."""
    methods = [m for m in settings.methods if not (m == "ce" and "self_distill" in settings.methods)]
    methods.sort(key=lambda m: m != "self_distill")
    return [{"method": m, "seed": s} for m in methods for s in settings.seeds]


# ----------------------------------------------------------------------------------------------
# Tune fan-out, results
# ----------------------------------------------------------------------------------------------

def _trial(config: dict) -> None:
    """Tune function trainable: runs one (method, seed) job; its TorchTrainer runs hold the CPUs."""
    from ray import tune

    settings = SelfDistillSettings.model_validate(config["settings"])
    job, ctx = config["job"], config["ctx"]
    out_dir, storage = Path(ctx["out_dir"]), Path(ctx["storage"])
    models = run_job(settings, job["method"], int(job["seed"]), out_dir, storage, ctx["run_tag"])
    path = out_dir / "trials" / f"{job['method']}-s{job['seed']}.json"
    atomic_write_bytes(path, json.dumps(models, default=float).encode())
    last = models[-1]
    tune.report({"accuracy": last["accuracy"], "nll": last["nll"], "ece": last["ece"], "models": len(models)})


def _row(m: dict, settings: SelfDistillSettings, run_id: str, chash: str) -> dict:
    t = m.get("teacher") or {}
    extra = {"generation": m["generation"], "nll": m["nll"], "ece": m["ece"], "ece_bins": settings.ece_bins,
             "reliability": m["reliability"], "losses": m["losses"], "epochs": settings.train.epochs,
             **{k: m[k] for k in ("mean_entropy", "nontarget_std", "true_prob_mean", "true_prob_std",
                                  "train_mean_entropy", "train_nontarget_std", "train_true_prob_mean", "train_true_prob_std")}}
    if t:
        extra.update({"teacher_weights": t["weights"], "teacher_mean_entropy": t["mean_entropy"],
                      "teacher_nontarget_std": t["nontarget_std"], "teacher_true_prob_std": t["true_prob_std"]})
    return make_row(method=m["label"], dataset=settings.data.name, student=settings.model.display, params=m["params"],
                    accuracy=m["accuracy"], teacher=t.get("label", ""), teacher_params=t.get("params"),
                    teacher_accuracy=t.get("accuracy"), wall_time_s=m["wall_time_s"], seed=m["seed"], cfg_hash=chash,
                    run_id=run_id, eval_split=prepare(settings.data.model_dump()).eval_split, extra=extra)


METHOD_ORDER = ["ce", "label_smoothing", "confidence_penalty", "beta_smoothing"]
METRIC_COLUMNS = ["method", "generation", "seed", "accuracy", "nll", "ece", "mean_entropy", "nontarget_std",
                  "train_mean_entropy", "train_nontarget_std", "teacher", "teacher_accuracy",
                  "teacher_mean_entropy", "teacher_nontarget_std", "wall_time_s"]


def metrics_table(models: list[dict]) -> pd.DataFrame:
    """One line per trained model: the numbers the paper judges by, plus its teacher's diversity."""
    lines = []
    for m in models:
        t = m.get("teacher") or {}
        lines.append({"method": m["label"], "generation": m["generation"], "seed": m["seed"],
                      **{k: m[k] for k in ("accuracy", "nll", "ece", "mean_entropy", "nontarget_std",
                                           "train_mean_entropy", "train_nontarget_std", "wall_time_s")},
                      "teacher": t.get("label", ""), "teacher_accuracy": t.get("accuracy", math.nan),
                      "teacher_mean_entropy": t.get("mean_entropy", math.nan),
                      "teacher_nontarget_std": t.get("nontarget_std", math.nan)})
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


def run(settings: SelfDistillSettings, out_dir: Path, name: str = "self_distill") -> pd.DataFrame:
    """Run every (method, seed) as a Ray Tune trial; write results rows, metrics CSVs and reliability
    diagrams under ``out_dir``; return this run's rows of the results table."""
    import ray
    from ray import tune

    init_ray()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = Path(settings.engine.storage_path or out_dir / "ray").resolve()
    chash = config_hash(settings.model_dump())
    run_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_tag = f"{run_id}-{chash}"  # fresh Ray Train run names: a rerun never picks up an older run's checkpoints
    if settings.text_features == "minilm_mean":  # embed the sentences once, before the trials read them
        SelfDistillMethod(make_task(settings, "ce", 0)).load_split("train")
        SelfDistillMethod(make_task(settings, "ce", 0)).load_split("test")

    jobs = jobs_of(settings)
    per_run = settings.engine.num_workers * settings.engine.cpus_per_worker
    concurrent = settings.max_concurrent_trials or max(1, int(ray.cluster_resources().get("CPU", 1) // per_run))
    print(f"[raykd] self_distill: {len(jobs)} Tune trials ({', '.join(sorted({j['method'] for j in jobs}))} x "
          f"seeds {settings.seeds}), {concurrent} at a time, on {settings.data.name}", flush=True)
    for old in (out_dir / "trials").glob("*.json"):
        old.unlink()
    ctx = {"out_dir": str(out_dir), "storage": str(storage), "run_tag": run_tag}
    tuner = tune.Tuner(
        # the trial only drives TorchTrainer runs, whose workers hold the CPUs; Tune needs a non-empty
        # request, so each trial reserves 1 MiB of memory and no CPU
        tune.with_resources(_trial, {"cpu": 0, "memory": 2**20}),
        param_space={"settings": settings.model_dump(), "ctx": ctx, "job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=f"{run_tag}-tune", storage_path=str(storage), verbose=0),
    )
    grid = tuner.fit()
    failed = [str(r.error).splitlines()[0] for r in grid if r.error]

    models = [m for f in sorted((out_dir / "trials").glob("*.json")) for m in json.loads(f.read_text())]
    if not models:
        raise RuntimeError(f"self_distill: every trial failed; first error: {failed[0] if failed else 'unknown'}")
    df = append_rows(out_dir, [_row(m, settings, run_id, chash) for m in models])
    metrics = metrics_table(models)
    metrics.to_csv(out_dir / "self_distill_metrics.csv", index=False)
    summary = summarise(metrics)
    summary.to_csv(out_dir / "self_distill_summary.csv", index=False)
    bins = {}
    for label in summary["method"]:
        bins[label] = pool_bins([m["reliability"] for m in models if m["label"] == label])
    plot_reliability(bins, out_dir / "reliability.png", title=f"{settings.data.name}: reliability (pooled over seeds)")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary[["method", "seeds", "accuracy_mean", "accuracy_std", "nll_mean", "ece_mean",
                       "mean_entropy_mean", "teacher_mean_entropy_mean"]].round(4).to_string(index=False), flush=True)
    print(f"[raykd] self_distill: results in {out_dir} (results.csv, self_distill_metrics.csv, "
          f"self_distill_summary.csv, reliability.png)", flush=True)
    if failed:
        raise RuntimeError(f"self_distill: {len(failed)} of {len(jobs)} trials failed; first error: {failed[0]}")
    return df[df["run_id"] == run_id].reset_index(drop=True)


def run_config(cfg) -> pd.DataFrame:
    """``raykd run`` entry point: a validated run config whose ``self_distill:`` section holds the settings."""
    return run(cfg.self_distill, Path(cfg.output_dir), name=cfg.name)
