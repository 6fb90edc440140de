"""Dataset distillation on Ray.

* Distillation runs as a Ray Train ``TorchTrainer``: every worker holds the same synthetic set,
  computes the exact meta-gradient on its own real batch (``outer_batch_size / num_workers``
  samples) and, for the random-init regime, its own freshly drawn theta_0; the gradients are
  averaged with ``torch.distributed.all_reduce`` so all workers take the same Adam step. Rank 0
  prints progress and reports a ``Checkpoint`` of the synthetic set (and optimiser state) every
  ``checkpoint_every`` iterations; a restarted run resumes from it.
* Evaluation trains many fresh networks on the distilled set, one Ray task per initialisation, and
  so do the random-real baseline and the full-train-set reference (cached on disk).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raykd import data as D
from raykd.distill.dataset import (
    DatasetDistillSettings, SyntheticSet, build_learner, evaluate_distilled, evaluate_full_train_set,
    evaluate_random_real, export, init_params, load_distilled, load_real_data, meta_gradient, plot_images,
    save_distilled, starting_params, write_sentences,
)
from raykd.engine.checkpoint import DamagedCheckpoint, restore_newest
from raykd.errors import UserError
from raykd.paths import atomic_write_bytes, cache_dir
from raykd.results import append_rows, config_hash, make_row
from raykd.runtime import init_ray

UNSEEN_INIT_SEED = 7_000_000  # evaluation inits are drawn from seeds no training iteration uses
PROBE_INIT_SEED = 6_999_999   # the init behind the quick accuracy printed during random-init training


# ----------------------------------------------------------------------------------------------
# Ray Train: one worker's outer loop
# ----------------------------------------------------------------------------------------------

def distill_loop_per_worker(config: dict) -> None:
    """Outer loop on one worker: meta-gradient on local real data, all-reduce, Adam step, report."""
    settings = DatasetDistillSettings(**config["settings"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()

    data = load_real_data(settings.dataset, settings.max_tokens)
    if device.type != "cpu":
        data = dataclasses.replace(data, **{f: getattr(data, f).to(device) for f in ("train_x", "train_y", "test_x", "test_y")},
                                   table=None if data.table is None else data.table.to(device))
    model = build_learner(settings, data.num_classes).to(device)
    syn = SyntheticSet.initial(settings, data, settings.sample_count(), settings.seed).to(device)
    opt = torch.optim.Adam(syn.parameters(), lr=settings.outer_lr, betas=settings.outer_betas)
    sched = torch.optim.lr_scheduler.StepLR(opt, settings.lr_decay_step, settings.lr_decay_factor)
    theta_run = {k: v.to(device) for k, v in starting_params(settings, model).items()}

    start, history, seconds, cpu_seconds = 0, [], [], []
    def say(msg: str) -> None:
        if rank == 0:
            print(f"[dataset_distill] {msg}", flush=True)

    state = restore_newest(ray.train.get_checkpoint(), lambda d: read_synthetic_checkpoint(d, device), say)
    if state is not None:  # resume after a crash: the synthetic set, Adam and the schedule
        syn.load_state_dict(state["synthetic"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = int(state["iteration"]), json.loads(state["history"])
        if rank == 0:
            print(f"[dataset_distill] resumed at outer iteration {start}", flush=True)

    g = torch.Generator().manual_seed(settings.seed * 1_000_003 + 7919 * (rank + 1) + start)
    local_batch = math.ceil(settings.outer_batch_size / world)
    for it in range(start, settings.outer_iterations):
        t0, c0 = time.perf_counter(), time.process_time()
        x_real, y_real = data.train_batch(local_batch, g)
        x_real, y_real = x_real.to(device), y_real.to(device)
        if settings.init == "random":  # a fresh theta_0 every outer iteration, different on every worker
            theta0 = init_params(model, settings.seed * 1_000_003 + it * world + rank + 1, settings.init_scheme)
        else:
            theta0 = theta_run
        loss, grads = meta_gradient(model, syn, theta0, x_real, y_real, settings)
        if world > 1:  # average the meta-gradients (and the loss, for the log) over workers
            for gr in grads:
                dist.all_reduce(gr)
                gr /= world
            loss = loss.clone()
            dist.all_reduce(loss)
            loss /= world
        for p, gr in zip(syn.parameters(), grads):
            p.grad = gr
        opt.step()
        sched.step()
        seconds.append(time.perf_counter() - t0)
        cpu_seconds.append(time.process_time() - c0)  # this worker process's CPU time, all threads

        done = it + 1
        if rank == 0 and (done % settings.log_every == 0 or done == settings.outer_iterations or it == start):
            probe = None if settings.init != "random" else PROBE_INIT_SEED
            acc = evaluate_distilled(settings, {k: v.cpu() for k, v in export(syn).items()}, probe, limit=2000)
            history.append([done, float(loss), acc])
            print(f"[dataset_distill] outer {done}/{settings.outer_iterations} loss {float(loss):.4f} "
                  f"quick test acc {acc:.4f} ({np.mean(seconds):.3f} s/iter)", flush=True)
        if done % settings.checkpoint_every == 0 or done == settings.outer_iterations:
            metrics = {"iteration": done, "loss": float(loss), "sec_per_iter": float(np.mean(seconds)),
                       "cpu_sec_per_iter": float(np.mean(cpu_seconds)) * world,
                       "history": json.dumps(history)}
            if rank == 0:
                with tempfile.TemporaryDirectory() as d:
                    save_synthetic_checkpoint(Path(d), syn, opt, sched, done, history)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics)


def save_synthetic_checkpoint(d: Path, syn: SyntheticSet, opt, sched, iteration: int, history: list) -> None:
    """Checkpoint directory: ``synthetic.safetensors`` (x, labels, lrs) and ``state.pt`` (to resume)."""
    from safetensors.torch import save_file

    save_file({k: v.cpu().contiguous() for k, v in export(syn).items()}, str(d / "synthetic.safetensors"))
    tmp = d / ".state.pt.tmp"
    torch.save({"synthetic": syn.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "iteration": iteration, "history": json.dumps(history)}, tmp)
    os.replace(tmp, d / "state.pt")  # written last and by rename: a checkpoint with state.pt is complete


def read_synthetic_checkpoint(d: Path, device) -> dict:
    f = Path(d) / "state.pt"
    try:
        return torch.load(f, weights_only=True, map_location=device)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DamagedCheckpoint(f"{f}: the checkpoint cannot be read ({type(e).__name__}); it is damaged or truncated") from None


def distill_on_ray(settings: DatasetDistillSettings, out_dir: Path, tag: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Run the outer loop on a ``TorchTrainer``; return the distilled set and the last reported metrics."""
    use_gpu = torch.cuda.is_available() if settings.use_gpu is None else settings.use_gpu
    # what is free now (inside a Tune trial the trial's own driver holds a sliver of a CPU)
    cpus = int(ray.available_resources().get("CPU", 1))
    threads = max(1, cpus // settings.num_workers)
    trainer = TorchTrainer(
        distill_loop_per_worker,
        train_loop_config={"settings": settings.model_dump(mode="json"), "threads": threads},
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": threads}),
        run_config=RunConfig(name=f"dataset_distill_{tag}_{time.strftime('%Y%m%d-%H%M%S')}",
                             storage_path=str((out_dir / "ray_train").resolve()),
                             failure_config=FailureConfig(max_failures=2),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        distilled, _ = load_distilled(Path(d) / "synthetic.safetensors")
    return distilled, dict(result.metrics)


# ----------------------------------------------------------------------------------------------
# Ray tasks: evaluations fan out, one fresh network per task
# ----------------------------------------------------------------------------------------------

# "DEFAULT": never captured into a caller's placement group (e.g. a Tune trial's one-bundle group)
@ray.remote(num_cpus=1, scheduling_strategy="DEFAULT")
def evaluate_task(kind: str, settings_json: dict, payload, seed: int | None) -> float:
    """kind 'distilled': train on the distilled set (payload) from init ``seed`` (None: the run's own);
    'random_real': ``payload`` random real samples; 'full': the whole train split."""
    torch.set_num_threads(1)
    settings = DatasetDistillSettings(**settings_json)
    if kind == "distilled":
        return evaluate_distilled(settings, payload, seed)
    if kind == "random_real":
        return evaluate_random_real(settings, int(payload), int(seed))
    return evaluate_full_train_set(settings)


def reference_key(settings: DatasetDistillSettings) -> str:
    return config_hash({"dataset": settings.dataset, "model": settings.model, "model_args": settings.model_args,
                        "epochs": settings.reference_epochs, "lr": settings.real_lr, "seed": settings.seed,
                        "max_tokens": settings.max_tokens, "init": settings.init,
                        "pretrained": settings.pretrained_path})


def full_train_set_accuracy(settings: DatasetDistillSettings) -> "float | ray.ObjectRef | None":
    """Accuracy of the learner trained on the full train split: from the cache, or a Ray task."""
    if settings.reference_epochs == 0:
        return None
    path = cache_dir("dataset_distill", "reference") / f"{reference_key(settings)}.json"
    if path.exists():
        return float(json.loads(path.read_text())["accuracy"])
    return evaluate_task.remote("full", settings.model_dump(mode="json"), None, None)


# ----------------------------------------------------------------------------------------------
# The whole experiment
# ----------------------------------------------------------------------------------------------

def run(settings: DatasetDistillSettings, out_dir: Path) -> pd.DataFrame:
    """Distil (soft labels, and the hard-label variant as a baseline), evaluate on fresh networks,
    compare with random real samples, save the sets and pictures, append results rows."""
    init_ray()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = D.info(settings.dataset, "dataset_distill.dataset")
    n = settings.sample_count()
    if settings.split_per_step and n % settings.steps:
        raise UserError(f"dataset_distill.split_per_step: {n} samples do not split into {settings.steps} equal steps")
    if settings.init == "pretrained" and not Path(settings.pretrained_path).exists():
        raise UserError(f"dataset_distill.pretrained_path: {settings.pretrained_path} does not exist")
    data = load_real_data(settings.dataset, settings.max_tokens)
    n_train = len(data.train_y)
    cfg_hash = config_hash(settings.model_dump(mode="json"))
    sj = settings.model_dump(mode="json")
    common = dict(dataset=settings.dataset, eval_split=f"{settings.dataset} test split", student=settings.model, params=n,
                  teacher="full training set",
                  teacher_params=n_train, seed=settings.seed, cfg_hash=cfg_hash)

    variants = [("soft" if settings.learn_labels else "hard", settings)]
    if settings.baselines and settings.learn_labels:
        variants.append(("hard", settings.model_copy(update={"learn_labels": False, "label_init": "onehot"})))

    pending = []  # (method, t_start, extra, accuracy refs)
    for tag, s in variants:
        t0 = time.time()
        print(f"[dataset_distill] {tag} labels: distilling {settings.dataset} into {n} samples "
              f"({s.init} init, {s.steps} steps x {s.epochs} epochs, {s.outer_iterations} outer iterations, "
              f"{s.num_workers} worker(s))", flush=True)
        distilled, metrics = distill_on_ray(s, out_dir, tag)
        theta0 = None if s.init == "random" else starting_params(s, build_learner(s, data.num_classes))
        save_distilled(out_dir / f"distilled_{tag}.safetensors", distilled, s, data, theta0)
        if data.kind == "image":
            plot_images(out_dir / f"distilled_{tag}.png", distilled, data, info.class_names or
                        tuple(str(c) for c in range(data.num_classes)), f"{settings.dataset}: {n} samples, {tag} labels")
        else:
            write_sentences(out_dir / f"distilled_{tag}.txt", distilled, data, info.class_names)
        distill_s = time.time() - t0
        sj_v = s.model_dump(mode="json")
        own = [evaluate_task.remote("distilled", sj_v, distilled, None)] if s.init != "random" else []
        fresh = [evaluate_task.remote("distilled", sj_v, distilled, UNSEEN_INIT_SEED + i) for i in range(s.eval_inits)]
        extra = {"labels": tag, "init": s.init, "samples": n, "steps": s.steps, "epochs": s.epochs,
                 "outer_iterations": s.outer_iterations, "sec_per_outer_iter": metrics.get("sec_per_iter"),
                 "cpu_sec_per_outer_iter": metrics.get("cpu_sec_per_iter"),
                 "distill_time_s": distill_s, "final_outer_loss": metrics.get("loss"), "num_workers": s.num_workers,
                 "learned_lrs": [round(float(v), 5) for v in distilled["lrs"]],
                 "label_min": float(distilled["labels"].min()),
                 "history": json.loads(metrics.get("history", "[]"))}
        pending.append((f"dataset_distill[{tag}]", t0, extra, own, fresh))

    reference = full_train_set_accuracy(settings)  # launched after distilling: it would hold a CPU the trainer needs
    if settings.baselines:
        t0 = time.time()
        fresh = [evaluate_task.remote("random_real", sj, n, settings.seed * 1000 + UNSEEN_INIT_SEED + i)
                 for i in range(settings.eval_inits)]
        pending.append(("random_real", t0, {"labels": "hard", "samples": n, "train_steps": settings.real_train_steps,
                                            "optimizer": f"Adam lr {settings.real_lr}, full batch"}, [], fresh))

    if isinstance(reference, ray.ObjectRef):
        acc_ref = float(ray.get(reference))
        atomic_write_bytes(cache_dir("dataset_distill", "reference") / f"{reference_key(settings)}.json",
                           json.dumps({"accuracy": acc_ref, "settings": sj}).encode())
        reference = acc_ref
    if reference is not None:
        print(f"[dataset_distill] {settings.model} trained on the full train set ({n_train} samples): "
              f"test accuracy {reference:.4f}", flush=True)

    rows = []
    for method, t0, extra, own, fresh in pending:
        fresh_accs = [float(a) for a in ray.get(fresh)]
        extra.update({"unseen_init_acc_mean": float(np.mean(fresh_accs)), "unseen_init_acc_std": float(np.std(fresh_accs)),
                      "unseen_inits": len(fresh_accs)})
        acc = float(ray.get(own[0])) if own else float(np.mean(fresh_accs))
        if own:
            extra["own_init_acc"] = acc
        rows.append(make_row(method=method, accuracy=acc, teacher_accuracy=reference, wall_time_s=time.time() - t0,
                             extra=extra, **common))
        spread = f" (+- {np.std(fresh_accs):.4f} over {len(fresh_accs)} inits)" if not own else \
            f" (unseen inits: {np.mean(fresh_accs):.4f} +- {np.std(fresh_accs):.4f})"
        print(f"[dataset_distill] {method}: {n} samples -> test accuracy {acc:.4f}{spread}", flush=True)
    append_rows(out_dir, rows)
    return pd.DataFrame(rows)
