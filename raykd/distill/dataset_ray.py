"""Dataset distillation on Ray (the algorithm itself is :mod:`raykd.distill.dataset`).

* Distillation runs as a Ray Train ``TorchTrainer``: every worker holds the same synthetic set,
  computes the exact meta-gradient on its own real batch (``outer_batch_size / num_workers``
  samples) and, for the random-init regime, its own freshly drawn theta_0; the gradients are
  averaged with ``torch.distributed.all_reduce`` so all workers take the same Adam step. Rank 0
  prints progress and reports a ``Checkpoint`` of the synthetic set (and optimiser state) every
  ``checkpoint_every`` iterations. The run is named by the caller: started again with the same name
  and storage (a rerun after a crash), it resumes from its newest intact checkpoint.
* Evaluation trains many fresh networks on the distilled set, one Ray task per initialisation, and
  so do the random-real baseline and the full-train-set reference (cached on disk across runs).
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
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raykd.config import EngineConfig
from raykd.data.prepare import fingerprint
from raykd.distill.dataset import (
    Recipe, SyntheticSet, build_learner, evaluate_distilled, evaluate_full_train_set, evaluate_random_real, export,
    init_params, load_distilled, load_real_data, meta_gradient, starting_params,
)
from raykd.engine.checkpoint import DamagedCheckpoint, restore_newest
from raykd.engine.trainer import quiet_reports, uses_gpu, worker_env
from raykd.paths import atomic_write_bytes, cache_dir
from raykd.plugins import setup_worker
from raykd.results import config_hash
from raykd.runtime import ray_log_level

UNSEEN_INIT_SEED = 7_000_000  # evaluation inits are drawn from seeds no training iteration uses
PROBE_INIT_SEED = 6_999_999   # the init behind the quick accuracy printed during random-init training


# ----------------------------------------------------------------------------------------------
# Ray Train: one worker's outer loop
# ----------------------------------------------------------------------------------------------

def distill_loop_per_worker(config: dict) -> None:
    """Outer loop on one worker: meta-gradient on local real data, all-reduce, Adam step, report."""
    setup_worker()  # the run's plugins (a user's dataset or learner)
    quiet_reports(config.get("log_level", "INFO"))
    recipe: Recipe = config["recipe"]
    s = recipe.settings
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()
    say = (lambda msg: print(f"[dataset_distill] {msg}", flush=True)) if rank == 0 else (lambda msg: None)

    data = load_real_data(recipe.data)
    if device.type != "cpu":
        data = dataclasses.replace(data, **{f: getattr(data, f).to(device) for f in ("train_x", "train_y", "test_x", "test_y")},
                                   table=None if data.table is None else data.table.to(device))
    model = build_learner(recipe.learner, data).to(device)
    syn = SyntheticSet.initial(s, data, s.sample_count(data.num_classes), recipe.seed).to(device)
    opt = torch.optim.Adam(syn.parameters(), lr=s.outer_lr, betas=s.outer_betas)
    sched = torch.optim.lr_scheduler.StepLR(opt, s.lr_decay_step, s.lr_decay_factor)
    theta_run = {k: v.to(device) for k, v in starting_params(recipe, model).items()}

    start, history, seconds, cpu_seconds = 0, [], [], []
    state = restore_newest(ray.train.get_checkpoint(), lambda d: read_synthetic_checkpoint(d, device), say)
    if state is not None:  # resume after a crash: the synthetic set, Adam and the schedule
        syn.load_state_dict(state["synthetic"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = int(state["iteration"]), json.loads(state["history"])
        say(f"resumed at outer iteration {start}")
        if start >= s.outer_iterations and state.get("metrics"):
            # every iteration had finished before the interruption (e.g. a driver killed after the last
            # checkpoint): report the final set and metrics again, so that the caller gets this run's result
            _report(rank, syn, opt, sched, start, history, {**json.loads(state["metrics"]), "resumed_at": start})
            return

    g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + 7919 * (rank + 1) + start)
    local_batch = math.ceil(s.outer_batch_size / world)
    for it in range(start, s.outer_iterations):
        t0, c0 = time.perf_counter(), time.process_time()
        x_real, y_real = data.train_batch(local_batch, g)
        x_real, y_real = x_real.to(device), y_real.to(device)
        if s.init == "random":  # a fresh theta_0 every outer iteration, different on every worker
            theta0 = init_params(model, recipe.seed * 1_000_003 + it * world + rank + 1, s.init_scheme)
        else:
            theta0 = theta_run
        loss, grads = meta_gradient(model, syn, theta0, x_real, y_real, s)
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
        if rank == 0 and (done % s.log_every == 0 or done == s.outer_iterations or it == start):
            probe = None if s.init != "random" else PROBE_INIT_SEED
            acc = evaluate_distilled(recipe, {k: v.cpu() for k, v in export(syn).items()}, probe, limit=2000)
            history.append([done, float(loss), acc])
            say(f"outer {done}/{s.outer_iterations} loss {float(loss):.4f} quick test acc {acc:.4f} "
                f"({np.mean(seconds):.3f} s/iter)")
        if done % s.checkpoint_every == 0 or done == s.outer_iterations:
            metrics = {"iteration": done, "loss": float(loss), "sec_per_iter": float(np.mean(seconds)),
                       "cpu_sec_per_iter": float(np.mean(cpu_seconds)) * world, "resumed_at": start}
            _report(rank, syn, opt, sched, done, history, metrics)


def _report(rank: int, syn: SyntheticSet, opt, sched, iteration: int, history: list, metrics: dict) -> None:
    """Report the metrics (and the history, as JSON) with a checkpoint written by rank 0."""
    metrics = {**metrics, "history": json.dumps(history)}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        save_synthetic_checkpoint(Path(d), syn, opt, sched, iteration, history, metrics)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def save_synthetic_checkpoint(d: Path, syn: SyntheticSet, opt, sched, iteration: int, history: list,
                              metrics: dict | None = None) -> None:
    """Checkpoint directory: ``synthetic.safetensors`` (x, labels, lrs) and ``state.pt`` (to resume)."""
    from safetensors.torch import save_file

    save_file({k: v.cpu().contiguous() for k, v in export(syn).items()}, str(d / "synthetic.safetensors"))
    tmp = d / ".state.pt.tmp"
    torch.save({"synthetic": syn.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "iteration": iteration, "history": json.dumps(history), "metrics": json.dumps(metrics or {})}, tmp)
    os.replace(tmp, d / "state.pt")  # written last and by rename: a checkpoint with state.pt is complete


def read_synthetic_checkpoint(d: Path, device) -> dict:
    f = Path(d) / "state.pt"
    try:
        return torch.load(f, weights_only=True, map_location=device)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DamagedCheckpoint(f"{f}: the checkpoint cannot be read ({type(e).__name__}); it is damaged or truncated") from None


def distill_on_ray(recipe: Recipe, engine: EngineConfig, name: str, storage: Path,
                   callbacks: list | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Run the outer loop on a ``TorchTrainer`` named ``name`` under ``storage`` (the same name resumes);
    return the distilled set and the last reported metrics.

    Each worker takes an equal share of the CPUs free now (at least ``engine.cpus_per_worker``) as its
    torch threads; inside a Tune trial the trial's own driver holds a sliver of a CPU."""
    engine = engine.resolved(concurrent=True)  # auto: one worker, taking the free CPUs below
    use_gpu = uses_gpu(engine)
    free = int(ray.available_resources().get("CPU", 1))
    cpus = max(engine.cpus_per_worker, float(free // engine.num_workers))
    trainer = TorchTrainer(
        distill_loop_per_worker,
        train_loop_config={"recipe": recipe, "threads": max(1, int(cpus)), "log_level": ray_log_level()},
        scaling_config=ScalingConfig(num_workers=engine.num_workers, use_gpu=bool(use_gpu),
                                     resources_per_worker={"CPU": cpus}, placement_strategy=engine.placement_strategy),
        run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve()),
                             failure_config=FailureConfig(max_failures=engine.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=callbacks, worker_runtime_env=worker_env(),
                             logging_config=ray.train.LoggingConfig(log_level=ray_log_level())),
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
def evaluate_task(kind: str, recipe: Recipe, payload, seed: int | None) -> float:
    """kind 'distilled': train on the distilled set (payload) from init ``seed`` (None: the run's own);
    'random_real': ``payload`` random real samples; 'full': all training rows."""
    torch.set_num_threads(1)
    if kind == "distilled":
        return evaluate_distilled(recipe, payload, seed)
    if kind == "random_real":
        return evaluate_random_real(recipe, int(payload), int(seed))
    return evaluate_full_train_set(recipe)


def evaluate_distilled_set(recipe: Recipe, distilled: dict[str, torch.Tensor]) -> tuple[list, list]:
    """Ray tasks: the run's own init (fixed or pretrained; none for random inits) and ``eval_inits`` unseen inits."""
    own = [evaluate_task.remote("distilled", recipe, distilled, None)] if recipe.settings.init != "random" else []
    fresh = [evaluate_task.remote("distilled", recipe, distilled, UNSEEN_INIT_SEED + i) for i in range(recipe.settings.eval_inits)]
    return own, fresh


def evaluate_random_real_sets(recipe: Recipe, n: int) -> list:
    """Ray tasks: ``eval_inits`` draws of ``n`` random real samples, each trained from a fresh init."""
    return [evaluate_task.remote("random_real", recipe, n, recipe.seed * 1000 + UNSEEN_INIT_SEED + i)
            for i in range(recipe.settings.eval_inits)]


def _reference_file(recipe: Recipe) -> Path:
    s = recipe.settings
    key = config_hash({"data": fingerprint(recipe.data), "model": recipe.learner.name, "model_args": recipe.learner.args,
                       "epochs": s.reference_epochs, "lr": s.real_lr, "seed": recipe.seed, "init": s.init,
                       "init_scheme": s.init_scheme, "pretrained": s.pretrained_path})
    return cache_dir("dataset_distill", "reference") / f"{key}.json"


def full_train_set_accuracy(recipe: Recipe) -> "float | ray.ObjectRef":
    """Accuracy of the learner trained on all training rows: from the cache, or a Ray task computing it."""
    path = _reference_file(recipe)
    if path.exists():
        return float(json.loads(path.read_text())["accuracy"])
    return evaluate_task.remote("full", recipe, None, None)


def remember_full_train_set_accuracy(recipe: Recipe, accuracy: float) -> None:
    atomic_write_bytes(_reference_file(recipe), json.dumps({"accuracy": accuracy}).encode())
