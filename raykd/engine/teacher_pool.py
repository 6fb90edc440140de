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

from raykd.config import EngineConfig
from raykd.engine.task import TaskSpec, build_task
from raykd.plugins import setup_worker


class TeacherInference:
    """A Ray Data callable class: one frozen teacher per actor."""

    def __init__(self, task: TaskSpec, max_length: int | None = None):
        setup_worker()  # the run's plugins (a user's teacher model)
        torch.set_num_threads(1)
        self.task = build_task(task)
        self.arrays = self.task.load_split("train")
        self.teacher = self.task.build_teacher()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.teacher.to(self.device)
        self.needs = task.teacher_needs & {"logits", "hidden_states"}
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = np.asarray(batch["id"] if "id" in batch else batch["data"], dtype=np.int64)
        b = self.task.batch(self.arrays, idx)
        out = self.task.teacher_forward(self.teacher, {k: v.to(self.device) for k, v in b.items()}, self.needs)
        res = {"id": idx, "t_logits": out["logits"].float().cpu().numpy()}
        if "hidden_states" in out:
            h = torch.stack(out["hidden_states"], dim=1).to(torch.float16).cpu()  # [B, layers+1, L, D]
            if self.max_length and h.shape[2] < self.max_length:
                h = torch.nn.functional.pad(h, (0, 0, 0, self.max_length - h.shape[2]))
            res["t_hidden"] = h.numpy()
        return res


def teacher_output_dataset(task: TaskSpec, engine: EngineConfig, use_gpu: bool) -> "ray.data.Dataset":
    """Example ids in shuffled blocks -> teacher actors. The ids live in the object store
    (``from_numpy``), so the pipeline needs no read or shuffle tasks competing for CPUs with the
    training workers; block order is re-randomised every epoch and the workers shuffle locally."""
    n = len(build_task(task).load_split("train")["label"])
    bs = task.train.batch_size
    ids = np.random.default_rng(task.train.seed).permutation(n)
    blocks = np.array_split(ids, max(1, min(64, n // max(1, bs))))
    return (ray.data.from_numpy([b.astype(np.int64) for b in blocks])  # column "data": no Project tasks
            .randomize_block_order()
            .map_batches(TeacherInference, fn_constructor_kwargs={"task": task,
                                                                  "max_length": task.dataset.max_length},
                         batch_size=bs, compute=ray.data.ActorPoolStrategy(size=engine.teacher_actors), num_cpus=engine.teacher_cpus,
                         num_gpus=engine.teacher_gpus if use_gpu else 0))
