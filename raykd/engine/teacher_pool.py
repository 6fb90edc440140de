"""Teacher inference in a Ray Data actor pool whose outputs stream into the training workers.

The dataset is the list of example ids, shuffled every epoch; each actor holds a frozen teacher
and its own copy of the (cached, memory-mapped) arrays, and emits ``id``, ``t_logits`` and, when a
loss needs them, ``t_hidden`` (the teacher's hidden states, fp16). Ray Train splits the stream
across workers with ``streaming_split``.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from raykd.distill.base import TaskSpec, build_method
from raykd.losses import NEEDS


def teacher_needs(task: TaskSpec) -> set[str]:
    out: set[str] = {"logits"}
    for spec in task.losses:
        out |= NEEDS.get(spec["name"], set())
    return out


class TeacherInference:
    """A Ray Data callable class: one frozen teacher per actor."""

    def __init__(self, task: TaskSpec, max_length: int | None = None):
        torch.set_num_threads(1)
        self.method = build_method(task)
        self.arrays = self.method.load_split("train")
        self.teacher = self.method.build_teacher()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.teacher.to(self.device)
        self.needs = teacher_needs(task) & {"logits", "hidden_states"}
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = np.asarray(batch["id"] if "id" in batch else batch["data"], dtype=np.int64)
        b = self.method.batch(self.arrays, idx)
        out = self.method.teacher_forward(self.teacher, {k: v.to(self.device) for k, v in b.items()}, self.needs)
        res = {"id": idx, "t_logits": out["logits"].float().cpu().numpy()}
        if "hidden_states" in out:
            h = torch.stack(out["hidden_states"], dim=1).to(torch.float16).cpu()  # [B, layers+1, L, D]
            if self.max_length and h.shape[2] < self.max_length:
                h = torch.nn.functional.pad(h, (0, 0, 0, self.max_length - h.shape[2]))
            res["t_hidden"] = h.numpy()
        return res


def teacher_output_dataset(task: TaskSpec, engine: dict, use_gpu: bool) -> "ray.data.Dataset":
    """Example ids in shuffled blocks -> teacher actors. The ids live in the object store
    (``from_numpy``), so the pipeline needs no read or shuffle tasks competing for CPUs with the
    training workers; block order is re-randomised every epoch and the workers shuffle locally."""
    n = len(build_method(task).load_split("train")["label"])
    bs = int(task.train.get("batch_size", 128))
    ids = np.random.default_rng(int(task.train.get("seed", 0))).permutation(n)
    blocks = np.array_split(ids, max(1, min(64, n // max(1, bs))))
    return (ray.data.from_numpy([b.astype(np.int64) for b in blocks])  # column "data": no Project tasks
            .randomize_block_order()
            .map_batches(TeacherInference, fn_constructor_kwargs={"task": task,
                                                                  "max_length": task.dataset.get("max_length")},
                         batch_size=bs, concurrency=int(engine.get("teacher_actors", 1)),
                         num_cpus=float(engine.get("teacher_cpus", 1.0)),
                         num_gpus=float(engine.get("teacher_gpus", 0.25)) if use_gpu else 0))
