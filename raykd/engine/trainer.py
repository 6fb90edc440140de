"""The Ray Train (V2) engine: one ``TorchTrainer`` run trains one model described by a
:class:`~raykd.engine.task.TaskSpec`.

Where the frozen teacher's outputs come from (``engine.teacher_placement`` / ``engine.teacher_cache``):

* ``colocated``  every worker holds a teacher replica and runs it on its own shard of each batch, so
  teacher inference is sharded with the data;
* ``actor_pool`` teacher inference runs in a Ray Data ``map_batches`` actor pool (GPU-fractional when
  GPUs exist) whose outputs stream into the workers' dataset shards (the workers look the inputs up
  by example id in their local copy of the arrays, so no image bytes cross the object store);
* ``teacher_cache`` the outputs are computed once per (teacher, dataset, transform) key and handed
  to every worker through the object store (see :mod:`raykd.engine.teacher_cache`).

The model trains data-parallel (DDP through ``ray.train.torch.prepare_model``); every epoch ends with
an evaluation on the evaluation split (sharded over workers, all-reduced) and a checkpoint; a
restarted run (a worker failure, or the same run started again) resumes from the newest intact
checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raykd.config import EngineConfig, TrainConfig
from raykd.engine.checkpoint import load_state, restore_newest, save_state, unwrap
from raykd.engine.task import ClassifyTask, TaskSpec, build_task, lr_at
from raykd.metrics import distillation_score
from raykd.plugins import loaded, setup_worker


def make_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=True)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


def _sync_buffers(model) -> None:
    """Give every rank rank 0's buffers before evaluating, so the reported accuracy is that of the model
    rank 0 checkpoints: BatchNorm running statistics are updated per rank, and DDP broadcasts them only
    at the start of the next training forward."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        for b in unwrap(model).buffers():
            torch.distributed.broadcast(b, src=0)


def _log(rank: int, msg: str) -> None:
    # Written to the process's real stdout (forwarded to the driver once by Ray); a plain print
    # would also be teed through Ray Train's patched print and appear twice.
    if rank == 0:
        print(f"[raykd] {msg}", file=sys.__stdout__, flush=True)


# ------------------------------------------------------------------------------------------------
# Where the teacher's outputs come from: three sources, one interface
# ------------------------------------------------------------------------------------------------

class TeacherSource:
    """Yields ``(batch, teacher_out)`` for one epoch of this worker's shard."""

    forward_examples = 0  # examples the teacher ran a forward pass on in this worker (cumulative)

    def epoch(self, w: "Worker", epoch: int) -> Iterator[tuple[dict, dict | None]]:
        raise NotImplementedError


def _my_indices(w: "Worker", epoch: int) -> Iterator[np.ndarray]:
    """This rank's batches of example ids: a seeded permutation per epoch, split evenly over ranks."""
    n, world, bs = len(w.train_arrays["label"]), w.world, w.task.spec.train.batch_size
    per_rank = n // world
    perm = np.random.default_rng(w.task.spec.train.seed * 1000 + epoch).permutation(n)[: per_rank * world]
    mine = perm[w.rank::world]
    return (np.sort(mine[i:i + bs]) for i in range(0, per_rank, bs))


@dataclass
class Colocated(TeacherSource):
    """A frozen teacher replica in this worker (or no teacher at all)."""

    teacher: torch.nn.Module | None
    needs: set[str]

    def epoch(self, w, epoch):
        for idx in _my_indices(w, epoch):
            batch = w.task.batch(w.train_arrays, idx)
            t_out = None
            if self.teacher is not None:
                t_out = w.task.teacher_forward(self.teacher, {k: v.to(w.device) for k, v in batch.items()}, self.needs)
                self.forward_examples += len(idx)
            yield batch, t_out


@dataclass
class Cached(TeacherSource):
    """Teacher outputs computed once (:mod:`raykd.engine.teacher_cache`), read by example id."""

    payload: dict

    def epoch(self, w, epoch):
        from raykd.engine.teacher_cache import lookup

        for idx in _my_indices(w, epoch):
            batch = w.task.batch(w.train_arrays, idx)
            yield batch, lookup(self.payload, idx, batch)


@dataclass
class Streamed(TeacherSource):
    """Teacher outputs streamed from the Ray Data actor pool into this worker's dataset shard."""

    def epoch(self, w, epoch):
        bs = w.task.spec.train.batch_size
        shard = ray.train.get_dataset_shard("train")
        for item in shard.iter_torch_batches(batch_size=bs, drop_last=False, local_shuffle_buffer_size=4 * bs):
            batch = w.task.batch(w.train_arrays, item["id"].numpy())
            t_out = {"logits": item["t_logits"].float()}
            if "t_hidden" in item:
                h = item["t_hidden"].float()
                t_out["hidden_states"] = tuple(h[:, j, : batch["input_ids"].shape[1]] for j in range(h.shape[1]))
            yield batch, t_out


# ------------------------------------------------------------------------------------------------
# One worker's run
# ------------------------------------------------------------------------------------------------

@dataclass
class Worker:
    """Everything one Ray Train worker holds during a run."""

    task: ClassifyTask
    engine: EngineConfig
    label: str
    rank: int
    world: int
    device: torch.device
    train_arrays: dict
    test_arrays: dict
    teacher: TeacherSource
    student: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ds_ref: dict | None = None
    throughput: list[float] = field(default_factory=list)  # samples/s of every epoch of this run


def _setup(config: dict) -> Worker:
    spec: TaskSpec = config["task"]
    engine: EngineConfig = config["engine"]
    ctx = ray.train.get_context()
    torch.set_num_threads(max(1, int(engine.cpus_per_worker)))
    torch.manual_seed(spec.train.seed)
    np.random.seed(spec.train.seed % (2**32))
    task = build_task(spec)
    student = task.build_student()
    if config.get("teacher_from_stream"):
        source, teacher = Streamed(), None
    elif config.get("teacher_cache_ref") is not None:
        source, teacher = Cached(ray.get(config["teacher_cache_ref"])), None
    else:
        teacher = task.build_teacher()
        source = Colocated(teacher, set())
    loss_fn = task.build_loss(student, teacher)
    device = ray.train.torch.get_device()
    if isinstance(source, Colocated):
        source.needs = loss_fn.teacher_needs if teacher is not None else set()
        if teacher is not None:
            teacher.to(device)
    loss_fn.to(device)
    optimizer = make_optimizer(list(student.parameters()) + list(loss_fn.parameters()), spec.train)
    return Worker(task, engine, config["label"], ctx.get_world_rank(), ctx.get_world_size(), device,
                  task.load_split("train"), task.load_split("test"), source, student, loss_fn, optimizer,
                  config.get("ds_ref"))


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: resume, then train and evaluate epoch by epoch."""
    # the run's plugins (given here too: Ray may have been started before them, e.g. in a notebook)
    setup_worker(config.get("plugins"))
    w = _setup(config)
    state = restore_newest(ray.train.get_checkpoint(), lambda d: load_state(d, w.student, w.optimizer, {"loss": w.loss_fn}),
                           lambda msg: _log(w.rank, f"{w.label}: {msg}"))
    start_epoch, step = (state["epoch"], state["step"]) if state else (0, 0)
    if state:
        _log(w.rank, f"{w.label}: resumed from checkpoint after epoch {start_epoch}")
    model = ray.train.torch.prepare_model(w.student)
    epochs = w.task.spec.train.epochs
    if state and start_epoch >= epochs and state.get("metrics"):
        # every epoch had finished before the interruption (e.g. a driver killed after the last
        # checkpoint): report the final metrics again, so that Tune and the caller get this run's result
        _report(w, model, state["metrics"], state | {"_final": True})
        return
    steps_per_epoch = math.ceil(len(w.train_arrays["label"]) // w.world / w.task.spec.train.batch_size)
    for epoch in range(start_epoch, epochs):
        w.task.on_epoch_start(epoch + 1, w.rank)
        t0 = time.perf_counter()
        step, seen, loss_sum, nb, logs = _train_epoch(w, model, epoch, step, steps_per_epoch * epochs)
        metrics = _evaluate(w, model, epoch, step, time.perf_counter() - t0, seen, loss_sum, nb, logs, start_epoch)
        _log(w.rank, f"{w.label}: epoch {epoch + 1}/{epochs} loss {metrics['train_loss']:.4f} "
                     f"test acc {metrics['accuracy']:.4f} ({metrics['samples_per_s']:.0f} samples/s)")
        last = epoch + 1 == epochs
        if (epoch + 1) % w.engine.checkpoint_every == 0 or last:
            _report(w, model, metrics, {"epoch": epoch + 1, "step": step, "metrics": metrics})
        else:
            ray.train.report(metrics)


def _train_epoch(w: Worker, model, epoch: int, step: int, total_steps: int):
    train = w.task.spec.train
    model.train()
    seen, loss_sum, nb, logs = 0, 0.0, 0, {}
    for batch, t_out in w.teacher.epoch(w, epoch):
        batch = {k: v.to(w.device) for k, v in batch.items()}
        if t_out is not None:
            t_out = {k: (v.to(w.device) if torch.is_tensor(v) else v) for k, v in t_out.items()}
        for g in w.optimizer.param_groups:
            g["lr"] = lr_at(step, total_steps, train.lr, train.schedule, train.warmup_fraction)
        loss, logs = w.task.loss(model, w.loss_fn, batch, t_out)
        w.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        w.optimizer.step()
        w.task.after_step(unwrap(model), step)
        step, nb = step + 1, nb + 1
        seen += len(batch["label"])
        loss_sum += float(loss.detach())
    return step, seen, loss_sum, nb, logs


def _evaluate(w: Worker, model, epoch: int, step: int, train_time: float, seen: int, loss_sum: float, nb: int,
              logs: dict, start_epoch: int) -> dict[str, Any]:
    """Evaluation on the evaluation split, sharded over workers and all-reduced, plus the epoch's figures."""
    _sync_buffers(model)
    test_idx = np.arange(w.rank, len(w.test_arrays["label"]), w.world)
    ev = w.task.evaluate(unwrap(model), {k: v[test_idx] for k, v in w.test_arrays.items()})
    correct, count, nll, seen_all, loss_all, nb_all, t_examples = _all_reduce_sum(
        [ev["correct"], ev["count"], ev["nll_sum"], seen, loss_sum, nb, w.teacher.forward_examples], w.device)
    w.throughput.append(seen_all / max(1e-9, train_time))
    metrics: dict[str, Any] = {
        "epoch": epoch + 1, "step": step, "train_loss": loss_all / max(1, nb_all),
        "accuracy": correct / max(1.0, count), "test_nll": nll / max(1.0, count),
        "samples_per_s": w.throughput[-1], "epoch_time_s": train_time,
        "teacher_forward_examples": t_examples, "resumed_after_epoch": start_epoch,
        "samples_per_s_by_epoch": list(w.throughput), **{f"loss_{k}": v for k, v in logs.items()},
        **{k: v for k, v in ev.items() if k not in ("correct", "count", "nll_sum")},
    }
    if w.ds_ref:  # lets Tune schedulers and searchers act on the distillation metric
        r = w.ds_ref
        metrics["ds"] = distillation_score(r["size_s"], r["size_t"], metrics["accuracy"], r["acc_t"], r["a"])
        metrics["student_size"] = r["size_s"]
    return metrics


def _report(w: Worker, model, metrics: dict, state: dict) -> None:
    """Report the epoch's metrics with a checkpoint (written by rank 0)."""
    state = {k: v for k, v in state.items() if k != "_final"}
    with tempfile.TemporaryDirectory() as d:
        if w.rank == 0:
            save_state(d, model, w.optimizer, state, {"loss": w.loss_fn})
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d) if w.rank == 0 else None)


# ------------------------------------------------------------------------------------------------
# The driver side
# ------------------------------------------------------------------------------------------------

def cluster_has_gpus() -> bool:
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def worker_env() -> dict:
    """Runtime environment of the Train workers: the driver's ``RAYKD_HOME`` and ``RAYKD_WHEELS``, when it
    sets them, so the workers read and build the same cache as the driver."""
    env = {k: str(Path(os.environ[k]).expanduser().resolve()) for k in ("RAYKD_HOME", "RAYKD_WHEELS") if os.environ.get(k)}
    return {"env_vars": env} if env else {}


def fit(task: TaskSpec | dict, engine: EngineConfig | dict, name: str, storage_path: str | Path, label: str | None = None,
        extra_config: dict | None = None, callbacks: list | None = None) -> ray.train.Result:
    """Train one model with a ``TorchTrainer``; returns Ray's ``Result`` (metrics + checkpoint).

    The run is named ``name`` under ``storage_path``: started again with the same name, it resumes."""
    task = task if isinstance(task, TaskSpec) else TaskSpec.model_validate(task)
    engine = engine if isinstance(engine, EngineConfig) else EngineConfig.model_validate(engine)
    use_gpu = cluster_has_gpus() if engine.use_gpu is None else engine.use_gpu
    config: dict[str, Any] = {"task": task, "engine": engine, "label": label or task.student.display,
                              "plugins": loaded(), **(extra_config or {})}
    datasets = None
    if task.uses_teacher and "features" in task.teacher_needs and (engine.teacher_placement == "actor_pool" or engine.teacher_cache):
        print("[raykd] losses read teacher modules by path (forward hooks): the teacher runs in the training "
              "workers (teacher_placement: colocated, no teacher cache)", flush=True)
        engine = engine.model_copy(update={"teacher_placement": "colocated", "teacher_cache": False})
    if task.uses_teacher and engine.teacher_placement == "actor_pool":
        from raykd.engine.teacher_pool import teacher_output_dataset

        datasets = {"train": teacher_output_dataset(task, engine, use_gpu)}
        config["teacher_from_stream"] = True
    elif task.uses_teacher and engine.teacher_cache and "teacher_cache_ref" not in config:
        from raykd.engine.teacher_cache import get_or_build

        ref = get_or_build(task, engine, use_gpu)
        if ref is not None:
            config["teacher_cache_ref"] = ref
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=engine.num_workers, use_gpu=bool(use_gpu),
                                     resources_per_worker={"CPU": engine.cpus_per_worker},
                                     placement_strategy=engine.placement_strategy),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=engine.max_failures),
                             callbacks=callbacks, worker_runtime_env=worker_env()),
        datasets=datasets,
    )
    return trainer.fit()
