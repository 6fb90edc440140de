"""The Ray Train (V2) engine: one ``TorchTrainer`` run trains the models of a run (jobs, each
described by a :class:`~raykd.engine.task.TaskSpec`) in turn, in one worker group started once
(:func:`fit_many`; :func:`fit` for one model). Inside a Tune trial that holds one worker's CPUs the
same loop runs in the trial's own process (:class:`TrialSession`), which Tune reuses for the next trial.

Where the frozen teacher's outputs come from (``engine.teacher_placement`` / ``engine.teacher_cache``):

* ``colocated``  every worker holds a teacher replica and runs it on its own shard of each batch, so
  teacher inference is sharded with the data;
* ``actor_pool`` teacher inference runs in a Ray Data ``map_batches`` actor pool (GPU-fractional when
  GPUs exist) whose outputs stream into the workers' dataset shards (the workers look the inputs up
  by example id in their local copy of the arrays, so no image bytes cross the object store);
* ``teacher_cache`` the outputs are computed once per (teacher, dataset, transform) key and handed
  to every worker through the object store (see :mod:`raykd.engine.teacher_cache`).

The model trains data-parallel (DDP through ``ray.train.torch.prepare_model``); every epoch ends with
an evaluation on the evaluation split (sharded over workers, all-reduced) and a checkpoint. With a
validation split (``data.validation``) every epoch is evaluated on it instead (``val_accuracy``,
``val_nll``), the epoch with the best validation accuracy is kept (in every checkpoint, under ``best/``),
and when the job ends that model is the job's model and the test split is read once, for it. A
checkpoint holds the current job's state and every finished job's model (``done/<item>/``), so a
restarted run (a worker failure, or the same run started again) resumes from the newest intact
checkpoint: finished jobs are skipped, the current one continues from its last epoch.

``engine.num_workers`` / ``cpus_per_worker`` ``auto`` (the default) resolve against the cluster
(:meth:`raykd.config.EngineConfig.resolved`): one worker per GPU, else one per node with the node's
CPUs as torch threads (on one machine a second DDP worker on the same cores was no faster than threads,
and changes the global batch), and one worker with one CPU per run where runs go side by side.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import shutil
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
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from raykd.config import EngineConfig
from raykd.engine.checkpoint import load_state, load_weights, read_state, restore_newest, save_state, save_weights, unwrap
from raykd.engine.task import ClassifyTask, TaskSpec, build_task, lr_at, make_optimizer  # noqa: F401 (re-exported)
from raykd.metrics import distillation_score
from raykd.plugins import loaded, setup_worker
from raykd.runtime import ray_log_level


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
        shard = w.session.get_dataset_shard("train")
        for item in shard.iter_torch_batches(batch_size=bs, drop_last=False, local_shuffle_buffer_size=4 * bs):
            batch = w.task.batch(w.train_arrays, item["id"].numpy())
            t_out = {"logits": item["t_logits"].float()}
            if "t_hidden" in item:
                h = item["t_hidden"].float()
                t_out["hidden_states"] = tuple(h[:, j, : batch["input_ids"].shape[1]] for j in range(h.shape[1]))
            yield batch, t_out


# ------------------------------------------------------------------------------------------------
# Where the loop runs: a Ray Train worker, or a Tune trial that is its own single worker
# ------------------------------------------------------------------------------------------------

class TrainSession:
    """The loop inside a Ray Train worker group (ranks, DDP, the run's checkpoints)."""

    def __init__(self):
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def get_checkpoint(self):
        return ray.train.get_checkpoint()

    def get_dataset_shard(self, name: str):
        return ray.train.get_dataset_shard(name)

    def report(self, metrics: dict, directory: str | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory) if directory else None)


class TrialSession:
    """The loop inside a Tune trial's own process (one worker: no worker group to start, and Tune reuses
    the process for the next trial). Reports and checkpoints go to Tune, which restores them on a
    resumed sweep; the newest checkpoint is also kept here for the caller in this process."""

    rank, world = 0, 1

    def __init__(self, use_gpu: bool):
        self.use_gpu = use_gpu
        self.kept: Path | None = None
        self.metrics: dict = {}

    def device(self) -> torch.device:
        return torch.device("cuda") if self.use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device())

    def get_checkpoint(self):
        from ray import tune

        return tune.get_checkpoint()

    def get_dataset_shard(self, name: str):
        raise RuntimeError("a trial that trains in its own process has no Ray Data shard (teacher_placement: actor_pool "
                           "needs a worker group)")

    def report(self, metrics: dict, directory: str | None) -> None:
        from ray import tune

        if directory:
            kept = Path(tempfile.mkdtemp(prefix="raykd-trial-"))
            shutil.copytree(directory, kept, dirs_exist_ok=True)
            if self.kept is not None:
                shutil.rmtree(self.kept, ignore_errors=True)
            self.kept = kept
        self.metrics = dict(metrics)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)


# ------------------------------------------------------------------------------------------------
# One worker's run: the models of a run (jobs), trained in turn
# ------------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One model a run trains: its results item, what it trains, its console label, and the reference
    for the distillation metric of its epochs (None: no DS)."""

    item: str
    task: TaskSpec
    label: str
    ds_ref: dict | None = None
    teacher_cache_ref: Any = None  # set by fit_many when engine.teacher_cache holds the teacher's outputs


def job_dir(item: str) -> str:
    """Where a finished job's model lies inside a checkpoint (``done/<item>/model.safetensors``)."""
    return "done/" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", item)


@dataclass
class Worker:
    """Everything one worker holds while it trains one job."""

    job: Job
    task: ClassifyTask
    engine: EngineConfig
    session: Any
    rank: int
    world: int
    device: torch.device
    train_arrays: dict
    test_arrays: dict
    teacher: TeacherSource
    student: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    val_arrays: dict | None = None  # data.validation rows: each epoch is judged on them, the test split read once at the end
    throughput: list[float] = field(default_factory=list)  # samples/s of every epoch of this job
    selection: "Selection | None" = None

    @property
    def label(self) -> str:
        return self.job.label

    @property
    def ds_ref(self) -> dict | None:
        return self.job.ds_ref


def _setup(job: Job, config: dict, session) -> Worker:
    spec, engine = job.task, config["engine"]
    torch.set_num_threads(max(1, int(engine.cpus_per_worker)))
    torch.manual_seed(spec.train.seed)
    np.random.seed(spec.train.seed % (2**32))
    task = build_task(spec)
    student = task.build_student()
    if config.get("teacher_from_stream") and spec.uses_teacher:
        source, teacher = Streamed(), None
    elif job.teacher_cache_ref is not None:
        source, teacher = Cached(ray.get(job.teacher_cache_ref)), None
    else:
        teacher = task.build_teacher()
        source = Colocated(teacher, set())
    loss_fn = task.build_loss(student, teacher)
    device = session.device()
    if isinstance(source, Colocated):
        source.needs = loss_fn.teacher_needs if teacher is not None else set()
        if teacher is not None:
            teacher.to(device)
    loss_fn.to(device)
    optimizer = make_optimizer(list(student.parameters()) + list(loss_fn.parameters()), spec.train)
    val = task.load_split("val") if spec.dataset.validation else None
    return Worker(job, task, engine, session, session.rank, session.world, device, task.load_split("train"),
                  task.load_split("test"), source, student, loss_fn, optimizer, val,
                  selection=Selection(copy.deepcopy(student)) if val is not None else None)


@dataclass
class Selection:
    """The best epoch on the validation split so far: its model (a copy on every rank), epoch and figures."""

    best: torch.nn.Module
    epoch: int = 0
    val_accuracy: float = -1.0
    val_nll: float = math.nan
    by_epoch: list[float] = field(default_factory=list)  # validation accuracy of every epoch
    nll_by_epoch: list[float] = field(default_factory=list)  # validation NLL of every epoch (shows overfitting)

    def update(self, model, metrics: dict) -> None:
        self.by_epoch.append(metrics["val_accuracy"])
        self.nll_by_epoch.append(metrics["val_nll"])
        if metrics["val_accuracy"] > self.val_accuracy:  # ties: the earlier epoch
            self.best.load_state_dict(unwrap(model).state_dict())
            self.epoch, self.val_accuracy, self.val_nll = metrics["epoch"], metrics["val_accuracy"], metrics["val_nll"]

    def state(self) -> dict:
        return {"epoch": self.epoch, "val_accuracy": self.val_accuracy, "val_nll": self.val_nll, "by_epoch": self.by_epoch,
                "nll_by_epoch": self.nll_by_epoch}

    def restore(self, directory: Path, state: dict) -> None:
        sel = state.get("selection")
        if sel and (directory / "best" / "model.safetensors").exists():
            load_weights(self.best, directory / "best" / "model.safetensors")
            self.epoch, self.val_accuracy, self.val_nll = int(sel["epoch"]), float(sel["val_accuracy"]), float(sel["val_nll"])
            self.by_epoch = [float(v) for v in sel["by_epoch"]]
            self.nll_by_epoch = [float(v) for v in sel.get("nll_by_epoch", [])]  # older checkpoints: none


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    # the run's plugins (given here too: Ray may have been started before them, e.g. in a notebook)
    setup_worker(config.get("plugins"))
    quiet_reports(config.get("log_level", "INFO"))
    run_jobs(config, TrainSession())


def quiet_reports(level: str) -> None:
    """Ray Train logs every report (its whole metrics dict and checkpoint path) under a logger named by its
    module's file path, outside ``ray.train``, so its ``LoggingConfig`` does not reach it: set its level here."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: its own logging settings apply
        return
    logging.getLogger(context.__file__).setLevel(level)


def _keep_copy(directory: Path) -> tuple[Path, dict]:
    """A local copy of an intact checkpoint (checked by its ``state.json``) to restore from, and its state."""
    state = read_state(directory)
    kept = Path(tempfile.mkdtemp(prefix="raykd-restore-"))
    shutil.copytree(directory, kept, dirs_exist_ok=True)
    return kept, state


def run_jobs(config: dict, session) -> None:
    """Train the run's jobs in turn in this worker group, resuming from the newest checkpoint.

    Every checkpoint holds the current job's state (model, optimizer, counters) plus each finished job's
    model under ``done/<item>/`` and its final metrics in ``state.json``, so the newest checkpoint alone
    resumes the whole run: finished jobs are skipped, the current one continues from its last epoch."""
    jobs: list[Job] = config["jobs"]
    log = (lambda msg: _log(session.rank, msg))
    kept, state = restore_newest(session.get_checkpoint(), _keep_copy, log) or (None, {})
    carry = Path(tempfile.mkdtemp(prefix="raykd-done-"))  # rank 0: finished jobs' models, copied into each checkpoint
    if kept is not None and (kept / "done").exists():
        shutil.copytree(kept / "done", carry / "done")
    done: dict[str, dict] = dict(state.get("done") or {})
    current = state.get("item", jobs[0].item if len(jobs) == 1 and state else None)  # older checkpoints: one job
    last = None
    for job in jobs:
        if job.item in done:
            log(f"{job.label}: finished in an earlier attempt")
            continue
        resume = kept if kept is not None and current == job.item else None
        last = _run_job(job, config, session, resume, carry, done)
    if last is None and kept is not None:
        # every job had finished before this attempt (e.g. a driver killed after the last checkpoint):
        # report the final state again, so that Tune and the caller get this run's result
        metrics = dict(done.get(jobs[-1].item) or state.get("metrics") or {})
        session.report(metrics, str(kept) if session.rank == 0 else None)
    shutil.rmtree(carry, ignore_errors=True)


def _run_job(job: Job, config: dict, session, resume: Path | None, carry: Path, done: dict) -> dict:
    w = _setup(job, config, session)
    start_epoch, step, wall_before, st = 0, 0, 0.0, {}
    if resume is not None:
        st = load_state(resume, w.student, w.optimizer, {"loss": w.loss_fn})
        start_epoch, step, wall_before = st["epoch"], st["step"], float(st.get("wall_s", 0.0))
        if w.selection is not None:
            w.selection.restore(resume, st)
        _log(w.rank, f"{w.label}: resumed from checkpoint after epoch {start_epoch}")
    model = session.prepare_model(w.student)
    epochs = w.task.spec.train.epochs
    t_job = time.perf_counter()
    steps_per_epoch = math.ceil(len(w.train_arrays["label"]) // w.world / w.task.spec.train.batch_size)
    metrics = dict(st.get("metrics") or {})
    for epoch in range(start_epoch, epochs):
        w.task.on_epoch_start(epoch + 1, w.rank)
        t0 = time.perf_counter()
        step, seen, loss_sum, nb, logs = _train_epoch(w, model, epoch, step, steps_per_epoch * epochs)
        metrics = _evaluate(w, model, epoch, step, time.perf_counter() - t0, seen, loss_sum, nb, logs, start_epoch)
        if w.selection is not None:
            w.selection.update(model, metrics)
        where, key = ("val", "val_accuracy") if w.selection is not None else ("test", "accuracy")
        _log(w.rank, f"{w.label}: epoch {epoch + 1}/{epochs} loss {metrics['train_loss']:.4f} "
                     f"{where} acc {metrics[key]:.4f} ({metrics['samples_per_s']:.0f} samples/s)")
        wall = wall_before + time.perf_counter() - t_job
        if epoch + 1 == epochs:
            break
        if (epoch + 1) % w.engine.checkpoint_every == 0:
            _report(w, model, metrics, {"item": job.item, "epoch": epoch + 1, "step": step, "metrics": metrics,
                                        "wall_s": wall, "done": done}, carry)
        else:
            session.report(metrics, None)
    if w.selection is not None:  # the selected epoch's model becomes the job's model; the test split is read now, once
        metrics = _select(w, model, metrics)
    # the job is finished: its model joins done/, and its last report's checkpoint holds it
    metrics = {**metrics, "item": job.item, "job_wall_s": wall_before + time.perf_counter() - t_job}
    done[job.item] = metrics
    if w.rank == 0:
        save_weights(unwrap(model), carry / job_dir(job.item) / "model.safetensors")
    _report(w, model, metrics, {"item": job.item, "epoch": epochs, "step": step, "metrics": metrics,
                                "wall_s": metrics["job_wall_s"], "done": done}, carry)
    return metrics


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


def _evaluate_split(w: Worker, model, arrays: dict, extra: list[float] = ()) -> tuple[dict, list[float]]:
    """``task.evaluate`` on ``arrays``, sharded over workers; the all-reduced correct/count/nll sums plus ``extra``."""
    _sync_buffers(model)
    idx = np.arange(w.rank, len(arrays["label"]), w.world)
    ev = w.task.evaluate(unwrap(model), {k: v[idx] for k, v in arrays.items()})
    return ev, _all_reduce_sum([ev["correct"], ev["count"], ev["nll_sum"], *extra], w.device)


def _evaluate(w: Worker, model, epoch: int, step: int, train_time: float, seen: int, loss_sum: float, nb: int,
              logs: dict, start_epoch: int) -> dict[str, Any]:
    """Evaluation on the evaluation split (the validation split when there is one: then the figures are
    named ``val_*`` and the test split is not read), sharded over workers and all-reduced, plus the epoch's figures."""
    val = w.val_arrays is not None
    ev, (correct, count, nll, seen_all, loss_all, nb_all, t_examples) = _evaluate_split(
        w, model, w.val_arrays if val else w.test_arrays, [seen, loss_sum, nb, w.teacher.forward_examples])
    w.throughput.append(seen_all / max(1e-9, train_time))
    acc, nll_key, pre = ("val_accuracy", "val_nll", "val_") if val else ("accuracy", "test_nll", "")
    metrics: dict[str, Any] = {
        "item": w.job.item, "epoch": epoch + 1, "step": step, "train_loss": loss_all / max(1, nb_all),
        acc: correct / max(1.0, count), nll_key: nll / max(1.0, count),
        "samples_per_s": w.throughput[-1], "epoch_time_s": train_time,
        "teacher_forward_examples": t_examples, "resumed_after_epoch": start_epoch,
        "samples_per_s_by_epoch": list(w.throughput), **{f"loss_{k}": v for k, v in logs.items()},
        **{pre + k: v for k, v in ev.items() if k not in ("correct", "count", "nll_sum")},
    }
    if w.ds_ref:  # lets Tune schedulers and searchers act on the distillation metric (of the validation split, if any)
        r = w.ds_ref
        metrics["ds"] = distillation_score(r["size_s"], r["size_t"], metrics[acc], r["acc_t"], r["a"])
        metrics["student_size"] = r["size_s"]
    return metrics


def _select(w: Worker, model, metrics: dict) -> dict:
    """The end of a job with a validation split: load the best epoch's model and read the test split once, for it."""
    sel = w.selection
    unwrap(model).load_state_dict(sel.best.state_dict())
    ev, (correct, count, nll) = _evaluate_split(w, model, w.test_arrays)
    out = {**metrics, "accuracy": correct / max(1.0, count), "test_nll": nll / max(1.0, count),
           **{k: v for k, v in ev.items() if k not in ("correct", "count", "nll_sum")},
           "selected_epoch": sel.epoch, "val_accuracy": sel.val_accuracy, "val_nll": sel.val_nll,
           "val_accuracy_by_epoch": list(sel.by_epoch), "val_nll_by_epoch": list(sel.nll_by_epoch),
           "eval_protocol": "best validation epoch, test read once"}
    if w.ds_ref:
        r = w.ds_ref
        out["ds"] = distillation_score(r["size_s"], r["size_t"], out["accuracy"], r["acc_t"], r["a"])
    _log(w.rank, f"{w.label}: epoch {sel.epoch} selected (val acc {sel.val_accuracy:.4f}), test acc {out['accuracy']:.4f}")
    return out


def _report(w: Worker, model, metrics: dict, state: dict, carry: Path) -> None:
    """Report the epoch's metrics with a checkpoint (written by rank 0): the current job's state and
    the finished jobs' models."""
    with tempfile.TemporaryDirectory() as d:
        if w.rank == 0:
            if (carry / "done").exists():
                shutil.copytree(carry / "done", Path(d) / "done")
            if w.selection is not None:  # the best epoch so far, so that a resumed job still selects among all epochs
                save_weights(w.selection.best, Path(d) / "best" / "model.safetensors")
                state = {**state, "selection": w.selection.state()}
            save_state(d, model, w.optimizer, state, {"loss": w.loss_fn})
        w.session.report(metrics, d if w.rank == 0 else None)


# ------------------------------------------------------------------------------------------------
# The driver side
# ------------------------------------------------------------------------------------------------

def cluster_has_gpus() -> bool:
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def uses_gpu(engine: EngineConfig) -> bool:
    """``engine.use_gpu``, or (None) whether the cluster has GPUs."""
    return cluster_has_gpus() if engine.use_gpu is None else bool(engine.use_gpu)


def worker_env() -> dict:
    """Runtime environment of the Train workers: the driver's ``RAYKD_HOME`` and ``RAYKD_WHEELS``, when it
    sets them, so the workers read and build the same cache as the driver."""
    env = {k: str(Path(os.environ[k]).expanduser().resolve()) for k in ("RAYKD_HOME", "RAYKD_WHEELS") if os.environ.get(k)}
    return {"env_vars": env} if env else {}


@dataclass
class Finished:
    """A finished job of a run: its final metrics and its model's weights file."""

    metrics: dict
    weights: Path


@contextlib.contextmanager
def finished_jobs(result) -> Iterator[dict[str, Finished]]:
    """The finished jobs of a run's result, by item (their weights readable inside the block)."""
    with result.checkpoint.as_directory() as d:
        state = read_state(d)
        yield {item: Finished(m, Path(d) / job_dir(item) / "model.safetensors") for item, m in (state.get("done") or {}).items()}


def in_trial_process(engine: EngineConfig) -> bool:
    """Whether a Tune trial with this engine trains in its own process (one worker, the teacher in it)."""
    return engine.resolved(concurrent=True).num_workers == 1 and engine.teacher_placement == "colocated"


def fit(task: TaskSpec | dict, engine: EngineConfig | dict, name: str, storage_path: str | Path, label: str | None = None,
        extra_config: dict | None = None, callbacks: list | None = None) -> ray.train.Result:
    """Train one model with a ``TorchTrainer``; returns Ray's ``Result`` (metrics + checkpoint, whose
    ``model.safetensors`` is the trained model). The run is named ``name`` under ``storage_path``: started
    again with the same name, it resumes."""
    task = task if isinstance(task, TaskSpec) else TaskSpec.model_validate(task)
    job = Job("model", task, label or task.student.display, (extra_config or {}).get("ds_ref"))
    return fit_many([job], engine, name, storage_path, callbacks)


def fit_many(jobs: list[Job], engine: EngineConfig | dict, name: str, storage_path: str | Path,
             callbacks: list | None = None, in_trial: bool = False, build_here: bool = False):
    """Train several models in turn in one worker group (started once): one ``TorchTrainer`` run named
    ``name``, resumable like :func:`fit`. Read the models with :func:`finished_jobs`.

    ``in_trial``: the caller is a Tune trial that holds the CPUs of one worker (:func:`in_trial_process`):
    the jobs train in the trial's own process, reporting to Tune. ``build_here``: a teacher-output cache
    that is missing is built in this process (a Tune trial: an actor pool it started could wait for CPUs
    that trials hold)."""
    engine = engine if isinstance(engine, EngineConfig) else EngineConfig.model_validate(engine)
    engine = engine.resolved(concurrent=in_trial)
    use_gpu = uses_gpu(engine)
    if any(j.task.uses_teacher and "features" in j.task.teacher_needs for j in jobs) and \
            (engine.teacher_placement == "actor_pool" or engine.teacher_cache):
        print("[raykd] losses read teacher modules by path (forward hooks): the teacher runs in the training "
              "workers (teacher_placement: colocated, no teacher cache)", flush=True)
        engine = engine.model_copy(update={"teacher_placement": "colocated", "teacher_cache": False})
    config: dict[str, Any] = {"jobs": jobs, "engine": engine, "plugins": loaded(), "log_level": ray_log_level()}
    datasets = None
    teachers = [j for j in jobs if j.task.uses_teacher]
    if teachers and engine.teacher_placement == "actor_pool":
        from raykd.engine.teacher_pool import teacher_output_dataset

        if len(teachers) > 1:
            raise ValueError("teacher_placement: actor_pool streams one teacher's outputs: train one distilled model per run")
        datasets = {"train": teacher_output_dataset(teachers[0].task, engine, use_gpu)}
        config["teacher_from_stream"] = True
    elif teachers and engine.teacher_cache:
        from raykd.engine.teacher_cache import get_or_build

        for j in teachers:
            j.teacher_cache_ref = get_or_build(j.task, engine, use_gpu, local=in_trial or build_here)
    if in_trial and datasets is None and engine.num_workers == 1:
        return _fit_in_trial(config, use_gpu)
    trainer = trainer_class(engine, use_gpu)(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=engine.num_workers, use_gpu=bool(use_gpu),
                                     resources_per_worker={"CPU": engine.cpus_per_worker},
                                     placement_strategy=engine.placement_strategy),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=engine.max_failures),
                             callbacks=callbacks, worker_runtime_env=worker_env(),
                             logging_config=ray.train.LoggingConfig(log_level=ray_log_level())),
        datasets=datasets,
    )
    return trainer.fit()


def trainer_class(engine: EngineConfig, use_gpu) -> type:
    """``TorchTrainer`` where workers share gradients (DDP over a torch process group) or use GPUs; for
    one CPU worker, Ray Train's generic ``DataParallelTrainer``: the same loop, workers, checkpoints and
    resume, without the torch backend. That backend sets up a process group one worker never uses, and
    makes the run's controller import torch to read its config: 1-2 s of every run's start on 2 cores."""
    return TorchTrainer if engine.num_workers > 1 or use_gpu else DataParallelTrainer


@dataclass
class TrialResult:
    """What :func:`fit_many` returns for jobs trained in a Tune trial's own process (the shape of the
    ``Result`` of a Ray Train run that callers read)."""

    metrics: dict
    checkpoint: Checkpoint


def _fit_in_trial(config: dict, use_gpu: bool) -> TrialResult:
    session = TrialSession(bool(use_gpu))
    run_jobs(config, session)
    return TrialResult(session.metrics, Checkpoint.from_directory(str(session.kept)))
