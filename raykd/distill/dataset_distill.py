"""Dataset distillation with learned soft labels (``method: dataset_distill``).

1. Distil (:mod:`raykd.distill.dataset` is the algorithm, :mod:`raykd.distill.dataset_ray` runs it on
   Ray Train): the ``data:`` rows into ``num_samples`` synthetic samples with soft labels and learned
   inner learning rates, for the ``student:`` learner; with ``baselines`` also the hard-label variant
   (fixed one-hot labels). Each is one Train run named after its item, so a rerun resumes it from its
   newest checkpoint. The sets (safetensors) and their pictures (images) or nearest-token sentences
   (text) go to ``OUTPUT_DIR/distilled/`` (``distilled/<trial>/`` in a sweep).
2. Evaluate, as Ray tasks: fresh networks trained only on each distilled set (the run's own init and
   ``eval_inits`` unseen ones); with ``baselines`` the same number of random real samples; with
   ``reference_epochs`` the learner trained on all training rows (cached across runs).
3. One results row per item, written as soon as it is known (a rerun skips what is written):

   ``distilled-soft``, ``distilled-hard``  a distilled set: accuracy of its own init (fixed/pretrained)
                                           or the mean over unseen inits (random), size = its samples
   ``random-real-<N>``                     N random real samples with hard labels (mean over draws)
   ``full-train-set``                      the reference (method ``teacher``, as kd's teacher row): the learner
                                           trained on every training row (size = their number); its accuracy
                                           is every row's teacher_accuracy (for DS)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import ray

from raykd import data as D
from raykd.config import DataConfig, EngineConfig, ModelSpec
from raykd.data.prepare import prepare
from raykd.distill.dataset import (
    TEXT_MODELS, DatasetDistillSettings, RealData, Recipe, build_learner, load_real_data, plot_images, save_distilled,
    starting_params, write_sentences,
)
from raykd.distill.dataset_ray import (
    distill_on_ray, evaluate_distilled_set, evaluate_random_real_sets, full_train_set_accuracy,
    remember_full_train_set_accuracy,
)
from raykd.engine.tensorboard import TensorBoardCallback
from raykd.errors import UserError
from raykd.method import register_method
from raykd.paths import atomic_write_bytes
from raykd.results import make_row
from raykd.schema import FieldError

SECTIONS = {"data": lambda: DataConfig(name="mnist"), "student": lambda: ModelSpec(name="lenet5"),
            "engine": lambda: EngineConfig(num_workers=1, max_failures=2), "sweep": None}
# engine fields of teacher -> student training that dataset distillation has no use for
ENGINE_UNUSED = ("teacher_placement", "teacher_actors", "teacher_gpus", "teacher_cpus", "teacher_cache",
                 "teacher_cache_max_gb", "checkpoint_every")
REFERENCE = "full-train-set"


def learner_problem(kind: str, learner: str, dataset: str) -> str | None:
    if (kind == "text") != (learner in TEXT_MODELS):
        want = "textcnn" if kind == "text" else "an image model such as lenet5 or cnn"
        return f"{dataset} is {kind} data: the learner must be {want}, got {learner!r}"
    return None


def split_problem(s: DatasetDistillSettings, num_classes: int) -> str | None:
    n = s.sample_count(num_classes)
    if s.split_per_step and n % s.steps:
        return f"{n} samples do not split into {s.steps} equal steps; change num_samples or steps"
    return None


def check(cfg) -> None:
    """Across sections: what does not apply is refused (engine teacher fields, sizes other than
    sample counts, text settings on images), and the learner must suit the data."""
    for f in ENGINE_UNUSED:
        if getattr(cfg.engine, f) != EngineConfig.model_fields[f].default:
            hint = "; the synthetic set is checkpointed every dataset_distill.checkpoint_every outer iterations" \
                if f == "checkpoint_every" else ""
            raise FieldError(f"engine.{f}", f"dataset_distill has no teacher network and no epochs; remove it{hint}")
    if cfg.metric.size != "params":
        raise FieldError("metric.size", "dataset_distill measures a training set's size by its number of samples; "
                         "use metric.size: params")
    if cfg.data.name == "user":  # kind and classes are known once the files are read: run checks them
        return
    info = D.info(cfg.data.name)
    if (problem := learner_problem(info.kind, cfg.student.name, cfg.data.name)) is not None:
        raise FieldError("student.name", problem)
    if info.kind == "image" and cfg.data.max_length != DataConfig.model_fields["max_length"].default:
        raise FieldError("data.max_length", f"tokens per sentence apply to text; {cfg.data.name} is images: remove it")
    if (problem := split_problem(cfg.dataset_distill, info.num_classes)) is not None:
        raise FieldError("dataset_distill.split_per_step", problem)


def label_variants(recipe: Recipe) -> list[tuple[str, Recipe]]:
    """Soft labels (hard ones when learn_labels is off) and, with baselines, the hard-label variant."""
    variants = [("soft" if recipe.settings.learn_labels else "hard", recipe)]
    if recipe.settings.baselines and recipe.settings.learn_labels:
        variants.append(("hard", recipe.with_settings(learn_labels=False, label_init="onehot")))
    return variants


def distill_variant(ctx, engine: EngineConfig, recipe: Recipe, tag: str, data: RealData, out: Path) -> dict:
    """One Ray Train run (resumed when it ran before), then the set, its picture or sentences, saved."""
    t0, s = time.time(), recipe.settings
    n, name = s.sample_count(data.num_classes), ctx.ray_name(f"distill-{tag}")
    print(f"[dataset_distill] {tag} labels: distilling {recipe.data.name} into {n} samples ({s.init} init, {s.steps} steps "
          f"x {s.epochs} epochs, {s.outer_iterations} outer iterations, {engine.num_workers} worker(s))", flush=True)
    # TensorBoard only: a sweep trial's metric is its row's accuracy, not the distillation loss
    distilled, metrics = distill_on_ray(recipe, engine, name, ctx.storage, [TensorBoardCallback(ctx.tensorboard_dir / name)])
    theta0 = None if s.init == "random" else starting_params(recipe, build_learner(recipe.learner, data))
    save_distilled(out / f"{tag}.safetensors", distilled, recipe, data, theta0)
    if data.kind == "image":
        plot_images(out / f"{tag}.png", distilled, data, f"{recipe.data.name}: {n} samples, {tag} labels")
    else:
        write_sentences(out / f"{tag}.txt", distilled, data)
    return {"distilled": distilled, "metrics": metrics, "t0": t0, "distill_s": time.time() - t0, "workers": engine.num_workers}


def variant_row(tag: str, recipe: Recipe, d: dict, own: list, fresh: list, n: int, reference: float | None,
                common: dict) -> dict:
    """The row of one distilled set, once its evaluations are in."""
    s, m = recipe.settings, d["metrics"]
    fresh_accs = [float(a) for a in ray.get(fresh)]
    acc = float(ray.get(own[0])) if own else float(np.mean(fresh_accs))
    extra = {"labels": tag, "init": s.init, "samples": n, "steps": s.steps, "epochs": s.epochs,
             "outer_iterations": s.outer_iterations, "sec_per_outer_iter": m.get("sec_per_iter"),
             "cpu_sec_per_outer_iter": m.get("cpu_sec_per_iter"), "resumed_at_iteration": m.get("resumed_at"),
             "distill_time_s": d["distill_s"], "final_outer_loss": m.get("loss"), "num_workers": d["workers"],
             "learned_lrs": [round(float(v), 5) for v in d["distilled"]["lrs"]],
             "label_min": float(d["distilled"]["labels"].min()), "history": json.loads(m.get("history", "[]")),
             "unseen_init_acc_mean": float(np.mean(fresh_accs)), "unseen_init_acc_std": float(np.std(fresh_accs)),
             "unseen_inits": len(fresh_accs), **({"own_init_acc": acc} if own else {})}
    spread = (f" (unseen inits: {np.mean(fresh_accs):.4f} +- {np.std(fresh_accs):.4f})" if own else
              f" (+- {np.std(fresh_accs):.4f} over {len(fresh_accs)} inits)")
    print(f"[dataset_distill] dataset_distill[{tag}]: {n} samples -> test accuracy {acc:.4f}{spread}", flush=True)
    return make_row(method=f"dataset_distill[{tag}]", item=f"distilled-{tag}", accuracy=acc, params=n,
                    teacher_accuracy=reference, wall_time_s=time.time() - d["t0"], extra=extra, **common)


def random_real_row(recipe: Recipe, item: str, fresh: list, n: int, t0: float, reference: float | None,
                    common: dict) -> dict:
    s = recipe.settings
    accs = [float(a) for a in ray.get(fresh)]
    print(f"[dataset_distill] random_real: {n} samples -> test accuracy {np.mean(accs):.4f} "
          f"(+- {np.std(accs):.4f} over {len(accs)} draws)", flush=True)
    return make_row(method="random_real", item=item, accuracy=float(np.mean(accs)), params=n, teacher_accuracy=reference,
                    wall_time_s=time.time() - t0, extra={"labels": "hard", "samples": n, "train_steps": s.real_train_steps,
                                                         "optimizer": f"Adam lr {s.real_lr}, full batch",
                                                         "unseen_init_acc_mean": float(np.mean(accs)),
                                                         "unseen_init_acc_std": float(np.std(accs)), "unseen_inits": len(accs)},
                    **common)


def reference_accuracy(ctx, recipe: Recipe, pending, t0: float, n_train: int, common: dict) -> float | None:
    """The full-train-set accuracy: ``pending`` (the cached value, or the Ray task computing it) recorded as
    its own row, or the row of an earlier attempt (None without a reference)."""
    if pending is None:
        row = ctx.done(REFERENCE)
        return None if row is None else float(row["accuracy"])
    acc = pending if isinstance(pending, float) else float(ray.get(pending))
    remember_full_train_set_accuracy(recipe, acc)
    print(f"[dataset_distill] {recipe.learner.display} trained on all {n_train} training rows: test accuracy {acc:.4f}",
          flush=True)
    ctx.record([make_row(method="teacher", item=REFERENCE, accuracy=acc, params=n_train, teacher_accuracy=acc,
                         wall_time_s=time.time() - t0, extra={"epochs": recipe.settings.reference_epochs, "batch_size": 256,
                                                              "optimizer": f"Adam lr {recipe.settings.real_lr}"},
                         **common)])
    return acc


@register_method("dataset_distill", settings=DatasetDistillSettings, sections=SECTIONS, check=check)
def run(cfg, ctx) -> list[dict]:
    """Dataset distillation with learned soft labels: a few synthetic samples that train a network."""
    recipe, s = Recipe.of(cfg), cfg.dataset_distill
    data = load_real_data(cfg.data)
    problem = learner_problem(data.kind, cfg.student.name, cfg.data.name) or split_problem(s, data.num_classes)
    if problem:
        raise UserError(f"dataset_distill: {problem}")
    atomic_write_bytes(ctx.out_dir / "data.json", json.dumps(prepare(cfg.data).describe(), indent=1).encode())
    n, n_train, t0 = s.sample_count(data.num_classes), len(data.train_y), time.time()
    common = dict(dataset=cfg.data.name, eval_split=data.eval_split, student=cfg.student.display,
                  teacher="full training set", teacher_params=n_train, seed=cfg.seed, a=cfg.metric.a,
                  size=cfg.metric.size, cfg_hash=ctx.run_id.rsplit("-", 1)[-1])
    out = ctx.out_dir / "distilled" / (ctx.trial or "")
    variants = []
    for tag, r in label_variants(recipe):
        if ctx.done(f"distilled-{tag}") is not None:
            print(f"[dataset_distill] {tag} labels: done in an earlier attempt", flush=True)
        else:
            variants.append((tag, r))
    runs = {tag: distill_variant(ctx, cfg.engine, r, tag, data, out) for tag, r in variants}

    # the evaluations start once every set is distilled: they would hold CPUs the Train workers need
    evals = {tag: evaluate_distilled_set(r, runs[tag]["distilled"]) for tag, r in variants}
    pending_ref = None if s.reference_epochs == 0 or ctx.done(REFERENCE) else full_train_set_accuracy(recipe)
    rr_item = f"random-real-{n}"
    random_real = evaluate_random_real_sets(recipe, n) if s.baselines and ctx.done(rr_item) is None else None
    reference = reference_accuracy(ctx, recipe, pending_ref, t0, n_train, common)
    for tag, r in variants:
        ctx.record([variant_row(tag, r, runs[tag], *evals[tag], n, reference, common)])
    if random_real is not None:
        ctx.record([random_real_row(recipe, rr_item, random_real, n, t0, reference, common)])
    order = [f"distilled-{tag}" for tag, _ in label_variants(recipe)] + [rr_item, REFERENCE]
    return sorted(ctx.rows().to_dict("records"), key=lambda r: order.index(r["item"]) if r["item"] in order else len(order))
