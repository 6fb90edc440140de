"""Multi-node scaling of distillation: student-training and teacher-inference samples/s for 1 and 2
Ray Train workers and both teacher placements (``colocated``, ``actor_pool``).

By default it starts the one-machine two-node cluster of :mod:`raykd.testing.cluster` (head + node b, each
``--cpus-per-node`` logical CPUs, token auth on); with ``--address`` it runs on an existing cluster
(e.g. one started from ``cluster.yaml``: ``--address auto`` on the head node).

    python benchmarks/scaling.py            # table + benchmarks/scaling_summary.json (about 2.5 min here)

Measured per (workers, placement), on MNIST (``--train-subset`` examples) with the cached
``configs/mnist_kd.yaml`` teacher (trained once if missing) and its middle student (cnn 8-16):

* student training: ``TorchTrainer`` KD run of ``--epochs`` epochs; samples/s of the last epoch as the
  engine reports it (all workers' samples over the epoch's wall time, teacher outputs included);
* teacher inference: the same teacher over the same examples in the same placement, with no student:
  ``colocated`` = one Ray task per worker, each running the teacher over its shard (samples over the
  slowest task's time); ``actor_pool`` = the engine's Ray Data actor pool (one actor per worker),
  steady-state rows/s from the first to the last batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_task(train_subset: int, epochs: int, batch_size: int):
    from raykd.config import load_config
    from raykd.engine.task import TaskSpec
    from raykd.distill.kd import ensure_teacher

    cfg = load_config(REPO / "configs" / "mnist_kd.yaml")
    teacher = ensure_teacher(cfg.data, cfg.teacher, cfg.engine, REPO / "runs" / "scaling" / "ray")
    student = cfg.students[1]
    data = cfg.data.model_dump() | {"train_subset": train_subset, "test_subset": 1000}
    task = TaskSpec(dataset=data, student={"name": student.name, "args": student.args},
                    teacher={"name": cfg.teacher.name, "args": cfg.teacher.args, "weights": teacher["weights"]},
                    losses=[l.as_dict() for l in cfg.losses],
                    train=cfg.train.model_dump() | {"epochs": epochs, "batch_size": batch_size})
    return task, student.display


def teacher_colocated_rate(task, workers: int) -> float:
    """Teacher inference as the colocated placement does it: each worker runs the teacher on its shard."""
    import numpy as np
    import ray
    import torch

    @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
    def shard(rank: int) -> tuple[int, float]:
        from raykd.engine.task import build_task

        torch.set_num_threads(1)
        method = build_task(task)
        arrays = method.load_split("train")
        teacher = method.build_teacher()
        idx = np.arange(rank, len(arrays["label"]), workers)
        bs = int(task.train.batch_size)
        t0 = time.perf_counter()
        for i in range(0, len(idx), bs):
            method.teacher_forward(teacher, method.batch(arrays, idx[i:i + bs]), {"logits"})
        return len(idx), time.perf_counter() - t0

    out = ray.get([shard.remote(r) for r in range(workers)])
    return sum(n for n, _ in out) / max(t for _, t in out)


def teacher_pool_rate(task, workers: int) -> float:
    """Teacher inference in the engine's Ray Data actor pool (one actor per worker), steady state."""
    from raykd.engine.teacher_pool import teacher_output_dataset

    ds = teacher_output_dataset(task, {"teacher_actors": workers, "teacher_cpus": 1.0}, use_gpu=False)
    first_t, last_t, rows_after_first = None, None, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        now = time.perf_counter()
        if first_t is None:
            first_t = now
        else:
            rows_after_first += len(batch["id"])
        last_t = now
    return rows_after_first / max(1e-9, last_t - first_t)


def actor_nodes() -> dict[str, tuple[str, str]]:
    """actor id -> (class name, node id) of every actor the cluster has started (state API)."""
    from ray.util.state import list_actors

    return {a.actor_id: (a.class_name, a.node_id) for a in list_actors(limit=10000)}


def nodes_of(actors: dict[str, tuple[str, str]], class_contains: str) -> list[str]:
    return sorted(node[:8] for cls, node in actors.values() if class_contains in cls)


def run(args) -> list[dict]:
    from raykd.engine.trainer import fit

    task, student = build_task(args.train_subset, args.epochs, args.batch_size)
    rows = []
    for workers in args.workers:
        for placement in ("colocated", "actor_pool"):
            engine = {"num_workers": workers, "teacher_placement": placement, "teacher_actors": workers,
                      "teacher_cpus": 1.0, "cpus_per_worker": 1.0, "use_gpu": False,
                      "placement_strategy": args.placement_strategy}
            before = actor_nodes()
            t0 = time.time()
            result = fit(task, engine, f"scaling-{placement}-{workers}-{int(t0)}", REPO / "runs" / "scaling" / "ray",
                         label=f"{student} {placement} x{workers}")
            wall = time.time() - t0
            new = {a: v for a, v in actor_nodes().items() if a not in before}  # the actors of this fit only
            teacher_rate = teacher_colocated_rate(task, workers) if placement == "colocated" else teacher_pool_rate(task, workers)
            row = {"workers": workers, "placement": placement,
                   "train_samples_per_s": round(float(result.metrics["samples_per_s"]), 1),
                   "teacher_samples_per_s": round(teacher_rate, 1),
                   "accuracy": round(float(result.metrics["accuracy"]), 4), "fit_wall_s": round(wall, 1),
                   "worker_nodes": nodes_of(new, "RayTrainWorker"),
                   # Ray Data's teacher actors (actor_pool only; a fresh pool per epoch): the nodes they ran on
                   "teacher_actor_nodes": sorted(set(nodes_of(new, "MapWorker")))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=None, help="existing cluster (e.g. auto); default: start the one-machine 2-node cluster")
    p.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs per node of the local cluster")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--placement-strategy", default="SPREAD", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
                   help="placement of the Train workers (engine.placement_strategy); SPREAD puts 2 workers on 2 nodes")
    p.add_argument("--train-subset", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "scaling_summary.json"), help="JSON of the table (committed for the default run)")
    args = p.parse_args()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    cluster_info: dict = {}
    if args.address:
        from raykd.runtime import init_ray

        init_ray(args.address)
        rows = run(args)
    else:
        from raykd.testing.cluster import LocalCluster, NodeSpec

        nodes = [NodeSpec("head", args.cpus_per_node, {"node_head": 1}),
                 NodeSpec("b", args.cpus_per_node, {"node_b": 1, "fake_gpu": 1})]
        with LocalCluster(nodes) as c:
            os.environ.update(c.auth_env())  # this driver authenticates with the cluster's token
            import ray

            from raykd.runtime import init_ray

            init_ray(c.gcs_address)
            try:
                rows = run(args)
                cluster_info = {"nodes": {name: c.node_id(name)[:8] for name in c.nodes}}
            finally:
                ray.shutdown()
    import ray

    info = {"cluster": args.address or f"one machine, 2 nodes x {args.cpus_per_node} logical CPUs ({os.cpu_count()} cores)",
            "placement_strategy": args.placement_strategy, "train_subset": args.train_subset, "epochs": args.epochs, "batch_size": args.batch_size,
            "ray": ray.__version__, **cluster_info}
    print(f"\n{'workers':>7} {'placement':>10} {'train samples/s':>16} {'teacher samples/s':>18} {'acc':>7} {'fit s':>6}  "
          f"{'worker nodes':<20} teacher actor nodes")
    for r in rows:
        print(f"{r['workers']:>7} {r['placement']:>10} {r['train_samples_per_s']:>16.1f} {r['teacher_samples_per_s']:>18.1f} "
              f"{r['accuracy']:>7.4f} {r['fit_wall_s']:>6.1f}  {' '.join(r['worker_nodes']):<20} "
              f"{' '.join(r['teacher_actor_nodes']) or '-'}")
    print(json.dumps(info))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
