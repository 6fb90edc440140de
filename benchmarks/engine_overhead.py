"""Engine overhead: student samples/s in Ray Train (1 worker, colocated teacher) against the same
loop in a plain PyTorch process on the same machine.

Both run the identical method code (batch building, frozen-teacher forward, weighted KD+CE loss,
backward, Adam step) with the same threads, batch size and data; throughput is training samples per
second of the last epoch (warmed up; evaluation excluded on both sides).

    python benchmarks/engine_overhead.py [--subset 20000] [--epochs 3] [--threads 1]

Prints a table and writes benchmarks/out/engine_overhead.json. Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raykd.engine.task import TaskSpec, build_task  # noqa: E402
from raykd.engine.task import make_optimizer  # noqa: E402

TEACHER = {"name": "cnn", "args": {"widths": [16, 32], "hidden": 128}, "weights": None}
STUDENT = {"name": "cnn", "args": {"widths": [8, 16], "hidden": 32}}
LOSSES = [{"name": "kd", "weight": 0.9, "temperature": 4.0}, {"name": "ce", "weight": 0.1}]


def make_task(subset: int, epochs: int, batch_size: int) -> TaskSpec:
    return TaskSpec(dataset={"name": "mnist", "train_subset": subset, "test_subset": 2000}, student=STUDENT,
                    teacher=TEACHER, losses=LOSSES,
                    train={"epochs": epochs, "batch_size": batch_size, "lr": 3e-3, "schedule": "constant", "seed": 0})


def plain_loop(task: TaskSpec, threads: int) -> list[float]:
    """The engine's inner loop without Ray: returns samples/s per epoch."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    method = build_task(task)
    arrays = method.load_split("train")
    student, teacher = method.build_student(), method.build_teacher()
    loss_fn = method.build_loss(student, teacher)
    needs = loss_fn.teacher_needs
    opt = make_optimizer(list(student.parameters()) + list(loss_fn.parameters()), task.train)
    n, bs = len(arrays["label"]), task.train.batch_size
    rates = []
    for epoch in range(task.train.epochs):
        student.train()
        perm = np.random.default_rng(epoch).permutation(n)
        t0, seen = time.perf_counter(), 0
        for i in range(0, n, bs):
            batch = method.batch(arrays, np.sort(perm[i:i + bs]))
            t_out = method.teacher_forward(teacher, batch, needs)
            loss, _ = method.loss(student, loss_fn, batch, t_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(batch["label"])
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def ray_train(task: TaskSpec, threads: int, storage: Path) -> list[float]:
    from raykd.engine.trainer import fit
    from raykd.runtime import init_ray

    init_ray(num_cpus=max(2, threads))
    result = fit(task, {"num_workers": 1, "cpus_per_worker": threads, "teacher_placement": "colocated",
                        "checkpoint_every": 1000}, f"engine-overhead-{int(time.time())}", storage)
    return [float(v) for v in result.metrics["samples_per_s_by_epoch"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subset", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "engine_overhead.json"))
    args = p.parse_args()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    task = make_task(args.subset, args.epochs, args.batch_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # plain, Ray Train, plain again: the plain reference is the mean of the two runs around the Ray
    # run, so a change in background load during the benchmark biases neither side
    plain_a = plain_loop(task, args.threads)
    rt = ray_train(task, args.threads, out.parent / "ray")
    plain_b = plain_loop(task, args.threads)
    plain = [(a + b) / 2 for a, b in zip(plain_a, plain_b)]
    ratio = rt[-1] / plain[-1]
    rows = [("plain PyTorch (before)", plain_a), ("Ray Train, 1 worker", rt), ("plain PyTorch (after)", plain_b),
            ("plain PyTorch (mean)", plain)]
    print(f"\nstudent {STUDENT['args']} <- teacher {TEACHER['args']}, MNIST subset {args.subset}, "
          f"batch {args.batch_size}, {args.threads} threads, {args.epochs} epochs")
    print(f"{'loop':<24}" + "".join(f"{'epoch ' + str(i + 1):>12}" for i in range(args.epochs)) + f"{'last (warm)':>14}")
    for name, r in rows:
        print(f"{name:<24}" + "".join(f"{v:>12.0f}" for v in r) + f"{r[-1]:>14.0f}")
    print(f"ratio Ray Train / plain (last epoch): {ratio:.3f}   target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}")
    out.write_text(json.dumps({"plain_samples_per_s": plain, "plain_before": plain_a, "plain_after": plain_b, "ray_train_samples_per_s": rt, "ratio_last_epoch": ratio,
                               "subset": args.subset, "epochs": args.epochs, "batch_size": args.batch_size,
                               "threads": args.threads, "machine": platform.platform(), "cpus": os.cpu_count(),
                               "torch": torch.__version__}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
