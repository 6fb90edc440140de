"""The Ray Train (V2) engine: one ``TorchTrainer`` run trains one student.

Teacher placement (``engine.teacher_placement``):

* ``colocated``  every worker holds a frozen teacher replica and runs it on its own shard of each
  batch, so teacher inference is sharded with the data;
* ``actor_pool`` teacher inference runs in a Ray Data ``map_batches`` actor pool (GPU-fractional when
  GPUs exist) whose outputs stream into the workers' dataset shards (the workers look the inputs up
  by example id in their local copy of the arrays, so no image bytes cross the object store);
* with ``engine.teacher_cache`` the frozen teacher's outputs come from the on-disk cache computed once
  per (teacher, dataset, transform) key (see :mod:`raykd.engine.teacher_cache`).

The student trains data-parallel (DDP through ``ray.train.torch.prepare_model``); every epoch ends
with an evaluation on the test split (sharded over workers, all-reduced) and a checkpoint; a
restarted run (worker failure or ``FailureConfig``) resumes from the latest checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raykd.distill.base import TaskSpec, build_method, lr_at
from raykd.engine.checkpoint import load_state, restore_newest, save_state, unwrap


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def make_optimizer(params, train: dict) -> torch.optim.Optimizer:
    opt, lr, wd = train.get("optimizer", "adam"), float(train.get("lr", 1e-3)), float(train.get("weight_decay", 0.0))
    if opt == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(train.get("momentum", 0.9)), weight_decay=wd, nesterov=True)
    if opt == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


def _log(rank: int, msg: str) -> None:
    # Written to the process's real stdout (forwarded to the driver once by Ray); a plain print
    # would also be teed through Ray Train's patched print and appear twice.
    if rank == 0:
        print(f"[raykd] {msg}", file=sys.__stdout__, flush=True)


def record_progress(directory: str, rank: int, epoch: int) -> None:
    """Append ``rank epoch pid`` to ``directory/progress.log`` at each epoch start (hook used by the
    fault-tolerance tests to find a worker's process id and to check which epochs ran after a restart)."""
    with open(Path(directory) / "progress.log", "a") as f:
        f.write(f"{rank} {epoch} {os.getpid()}\n")


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    task: TaskSpec = config["task"]
    engine: dict = config["engine"]
    label: str = config.get("label", task.student["name"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(engine.get("cpus_per_worker", 1))))
    train_cfg = task.train
    seed = int(train_cfg.get("seed", 0))
    _seed_all(seed)
    device = ray.train.torch.get_device()

    method = build_method(task)
    train_arrays = method.load_split("train")
    test_arrays = method.load_split("test")
    student = method.build_student()
    cache_ref = config.get("teacher_cache_ref")
    cached = ray.get(cache_ref) if cache_ref is not None else None  # frozen-teacher outputs, computed once
    stream = config.get("teacher_from_stream", False)
    teacher = method.build_teacher() if cached is None and not stream else None
    loss_fn = method.build_loss(student, teacher)
    needs = loss_fn.teacher_needs if teacher is not None or config.get("teacher_from_stream") or cached else set()
    teacher_examples = 0  # examples the teacher ran a forward pass on in this worker (cumulative)
    throughput: list[float] = []  # samples/s of every epoch of this run
    if teacher is not None:
        teacher.to(device)
    loss_fn.to(device)
    optimizer = make_optimizer(list(student.parameters()) + list(loss_fn.parameters()), train_cfg)

    start_epoch, step = 0, 0
    ckpt = ray.train.get_checkpoint()
    state = restore_newest(ckpt, lambda d: load_state(d, student, optimizer, {"loss": loss_fn}),
                           lambda msg: _log(rank, f"{label}: {msg}"))
    resumed = state is not None
    if resumed:
        start_epoch, step = state["epoch"], state["step"]
        _log(rank, f"{label}: resumed from checkpoint after epoch {start_epoch}")

    model = ray.train.torch.prepare_model(student)
    epochs, bs = int(train_cfg.get("epochs", 1)), int(train_cfg.get("batch_size", 128))
    n = len(train_arrays["label"])
    per_rank = n // world
    steps_per_epoch = math.ceil(per_rank / bs)
    total_steps = epochs * steps_per_epoch
    if resumed and start_epoch >= epochs and state.get("metrics"):
        # every epoch had finished before the interruption (e.g. a sweep driver killed after the last
        # checkpoint): report the final metrics again, so that Tune and the caller get this run's result
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                save_state(d, model, optimizer, state, {"loss": loss_fn})
            ray.train.report(state["metrics"], checkpoint=Checkpoint.from_directory(d) if rank == 0 else None)
        return

    for epoch in range(start_epoch, epochs):
        if config.get("progress_dir"):
            record_progress(config["progress_dir"], rank, epoch + 1)
        model.train()
        t0, seen, loss_sum, nb = time.perf_counter(), 0, 0.0, 0
        if stream:
            shard = ray.train.get_dataset_shard("train")
            batches = (({k: v for k, v in b.items()}) for b in shard.iter_torch_batches(batch_size=bs, drop_last=False, local_shuffle_buffer_size=4 * bs))
        else:
            perm = np.random.default_rng(seed * 1000 + epoch).permutation(n)[: per_rank * world]
            mine = perm[rank::world]
            batches = (np.sort(mine[i:i + bs]) for i in range(0, per_rank, bs))
        for item in batches:
            if stream:
                idx = item["id"].numpy()
                batch = method.batch(train_arrays, idx)
                t_out = {"logits": item["t_logits"].float()}
                if "t_hidden" in item:
                    h = item["t_hidden"].float()
                    t_out["hidden_states"] = tuple(h[:, j, : batch["input_ids"].shape[1]] for j in range(h.shape[1]))
            elif cached is not None:
                batch = method.batch(train_arrays, item)
                from raykd.engine.teacher_cache import lookup

                t_out = lookup(cached, item, batch)
            else:
                batch = method.batch(train_arrays, item)
                t_out = method.teacher_forward(teacher, {k: v.to(device) for k, v in batch.items()}, needs) if teacher is not None else None
                teacher_examples += len(item) if teacher is not None else 0
            batch = {k: v.to(device) for k, v in batch.items()}
            if t_out is not None:
                t_out = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t_out.items()}
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, total_steps, float(train_cfg.get("lr", 1e-3)), train_cfg.get("schedule", "cosine"),
                                float(train_cfg.get("warmup_fraction", 0.0)))
            loss, logs = method.loss(model, loss_fn, batch, t_out)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(train_cfg["grad_clip"]))
            optimizer.step()
            method.after_step(unwrap(model), step)
            step += 1
            nb += 1
            seen += len(batch["label"])
            loss_sum += float(loss.detach())
            if nb % max(1, steps_per_epoch // 4) == 0 and nb < steps_per_epoch:
                _log(rank, f"{label}: epoch {epoch + 1}/{epochs} step {nb}/{steps_per_epoch} loss {loss_sum / nb:.4f}")
        train_time = time.perf_counter() - t0

        # evaluation on the test split, sharded over workers
        test_idx = np.arange(rank, len(test_arrays["label"]), world)
        ev = method.evaluate(unwrap(model), {k: v[test_idx] for k, v in test_arrays.items()})
        correct, count, nll, seen_all, loss_all, nb_all, t_examples = _all_reduce_sum(
            [ev["correct"], ev["count"], ev["nll_sum"], seen, loss_sum, nb, teacher_examples], device)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "train_loss": loss_all / max(1, nb_all),
            "accuracy": correct / max(1.0, count), "test_nll": nll / max(1.0, count),
            "samples_per_s": seen_all / max(1e-9, train_time), "epoch_time_s": train_time,
            "teacher_forward_examples": t_examples, "resumed_after_epoch": start_epoch,
            "samples_per_s_by_epoch": throughput + [seen_all / max(1e-9, train_time)],
            **{f"loss_{k}": v for k, v in logs.items()},
        }
        ref = config.get("ds_ref")  # lets Tune schedulers and searchers act on the distillation metric
        if ref:
            from raykd.sweep.metric import distillation_score

            metrics["ds"] = distillation_score(ref["size_s"], ref["size_t"], metrics["accuracy"], ref["acc_t"], ref["a"])
        throughput = metrics["samples_per_s_by_epoch"]
        for k, v in ev.items():
            if k not in ("correct", "count", "nll_sum"):
                metrics[k] = v
        _log(rank, f"{label}: epoch {epoch + 1}/{epochs} loss {metrics['train_loss']:.4f} "
                   f"test acc {metrics['accuracy']:.4f} ({metrics['samples_per_s']:.0f} samples/s)")
        last = epoch + 1 == epochs
        if (epoch + 1) % int(engine.get("checkpoint_every", 1)) == 0 or last:
            with tempfile.TemporaryDirectory() as d:
                if rank == 0:
                    save_state(d, model, optimizer, {"epoch": epoch + 1, "step": step, "metrics": metrics}, {"loss": loss_fn})
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
                else:
                    ray.train.report(metrics)
        else:
            ray.train.report(metrics)


def cluster_has_gpus() -> bool:
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def worker_env() -> dict:
    """Runtime environment of the Train workers: the driver's ``RAYKD_HOME`` and ``RAYKD_WHEELS``, when it
    sets them, so the workers read and build the same cache as the driver."""
    env = {k: str(Path(os.environ[k]).expanduser().resolve()) for k in ("RAYKD_HOME", "RAYKD_WHEELS") if os.environ.get(k)}
    return {"env_vars": env} if env else {}


def fit(task: TaskSpec, engine: dict, name: str, storage_path: str | Path, label: str | None = None,
        extra_config: dict | None = None, callbacks: list | None = None) -> ray.train.Result:
    """Train one student with a ``TorchTrainer``; returns Ray's ``Result`` (metrics + checkpoint)."""
    use_gpu = engine.get("use_gpu")
    if use_gpu is None:
        use_gpu = cluster_has_gpus()
    resources = {"CPU": float(engine.get("cpus_per_worker", 1.0))}
    config: dict[str, Any] = {"task": task, "engine": engine, "label": label or task.student["name"], **(extra_config or {})}
    datasets = None
    if task.uses_teacher and engine.get("teacher_placement") == "actor_pool":
        from raykd.engine.teacher_pool import teacher_output_dataset

        datasets = {"train": teacher_output_dataset(task, engine, use_gpu)}
        config["teacher_from_stream"] = True
    elif task.uses_teacher and engine.get("teacher_cache") and "teacher_cache_ref" not in config:
        from raykd.engine.teacher_cache import get_or_build

        ref = get_or_build(task, engine, use_gpu)
        if ref is not None:
            config["teacher_cache_ref"] = ref
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=int(engine.get("num_workers", 1)), use_gpu=bool(use_gpu),
                                     resources_per_worker=resources,
                                     placement_strategy=str(engine.get("placement_strategy", "PACK"))),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=int(engine.get("max_failures", 0))),
                             callbacks=callbacks, worker_runtime_env=worker_env()),
        datasets=datasets,
    )
    return trainer.fit()
