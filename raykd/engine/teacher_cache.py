"""Teacher-output cache: a frozen teacher on fixed (non-augmented) data gives the same outputs in
every trial and every epoch, so compute them once per key and let every run read them.

Key = sha256 of (teacher weights file, teacher architecture, dataset fingerprint, the input
transform (tokeniser length / image normalisation code), which outputs are kept). A changed teacher
checkpoint or dataset gives a new key. Outputs are computed by the teacher-inference actor pool
(Ray Data ``map_batches``), stored under ``$RAYKD_HOME/teacher_outputs/<key>/`` as fp16 arrays
(logits, and the hidden states when a loss needs them), and handed to the training workers through
the object store. Outputs larger than ``engine.teacher_cache_max_gb`` are not kept: the run says so
and computes the teacher online instead.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import ray
import torch

from raykd.cache import entry, files_fingerprint, is_complete
from raykd.data.artifacts import sha256_file
from raykd.config import EngineConfig
from raykd.data.prepare import fingerprint
from raykd.engine.task import TaskSpec, build_task
from raykd.paths import cache_dir
from raykd.runtime import quiet_ray_data

_REFS: dict[str, "ray.ObjectRef"] = {}


def _transform_fingerprint(task: TaskSpec) -> str:
    from raykd.data import prepare
    from raykd.engine import task as task_module

    return hashlib.sha256(inspect.getsource(task_module.ClassifyTask.batch).encode()
                          + inspect.getsource(task_module.ClassifyTask._load_split).encode()
                          + inspect.getsource(prepare).encode()).hexdigest()[:12]


def cache_key(task: TaskSpec, keep_hidden: bool) -> str:
    weights = task.teacher.weights
    blob = {
        "teacher": {"name": task.teacher.name, "args": task.teacher.args,
                    "weights_sha256": sha256_file(Path(weights)) if weights else None,
                    **({"files": files} if (files := files_fingerprint(task.teacher.args)) else {})},
        "data": fingerprint(task.dataset),
        "transform": _transform_fingerprint(task),
        "hidden": keep_hidden,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _needs_hidden(task: TaskSpec) -> bool:
    return "hidden_states" in task.teacher_needs


def estimate_bytes(task: TaskSpec, n: int, num_classes: int) -> int:
    per = num_classes
    if _needs_hidden(task):
        ctx = build_task(task).teacher_context()
        per += (ctx.get("teacher_layers", 0) + 1) * task.dataset.max_length * ctx.get("teacher_hidden", 0)
    return 2 * n * per


def build(task: TaskSpec, engine: EngineConfig, use_gpu: bool, directory: Path, local: bool = False) -> None:
    """Run the teacher once over the training split with the actor pool (``local``: in this process,
    whose CPUs are the caller's, e.g. a sweep trial's) and store the outputs in ``directory`` (a fresh
    directory that :func:`raykd.cache.entry` renames into place when complete)."""
    from raykd.engine.teacher_pool import TeacherInference

    method = build_task(task)
    n = len(method.load_split("train")["label"])
    bs = task.train.batch_size * 4
    if local:
        infer = TeacherInference(task, task.dataset.max_length)
        batches = (infer({"id": np.arange(i, min(n, i + bs))}) for i in range(0, n, bs))
    else:
        quiet_ray_data()
        batches = ray.data.range(n).map_batches(
            TeacherInference, fn_constructor_kwargs={"task": task, "max_length": task.dataset.max_length},
            batch_size=bs, compute=ray.data.ActorPoolStrategy(size=engine.teacher_actors), num_cpus=engine.teacher_cpus,
            num_gpus=engine.teacher_gpus if use_gpu else 0).iter_batches(batch_size=bs, batch_format="numpy")
    logits, hidden, seen = None, None, 0
    for b in batches:
        idx = b["id"]
        if logits is None:
            logits = np.zeros((n, b["t_logits"].shape[1]), np.float16)
            if "t_hidden" in b:
                hidden = np.lib.format.open_memmap(directory / "hidden.npy", "w+", np.float16, (n, *b["t_hidden"].shape[1:]))
        logits[idx] = b["t_logits"]
        if hidden is not None:
            hidden[idx] = b["t_hidden"]
        seen += len(idx)
        if seen % (bs * 20) < len(idx):
            print(f"[raykd] teacher-output cache: {seen:,}/{n:,} examples", flush=True)
    np.save(directory / "logits.npy", logits)
    if hidden is not None:
        hidden.flush()
        del hidden
    ctx = method.teacher_context()
    (directory / "meta.json").write_text(json.dumps({"examples": n, "teacher_forward_examples": seen,
                                                    "context": ctx, "teacher": task.teacher.name}))


def get_or_build(task: TaskSpec, engine: EngineConfig, use_gpu: bool = False, local: bool = False) -> "ray.ObjectRef | None":
    """An object-store reference to the cached outputs (building them once), or None to go online.
    ``local``: build them in this process (a caller that holds the CPUs, like a sweep trial training
    in its own process, would otherwise wait for CPUs it holds itself)."""
    keep_hidden = _needs_hidden(task)
    key = cache_key(task, keep_hidden)
    if key in _REFS:
        return _REFS[key]
    directory = cache_dir("teacher_outputs") / key
    if not is_complete(directory):
        method = build_task(task)
        n = len(method.load_split("train")["label"])
        need = estimate_bytes(task, n, method.num_classes)
        limit = engine.teacher_cache_max_gb * 2**30
        if need > limit:
            print(f"[raykd] teacher-output cache: {need / 2**30:.1f} GiB of outputs exceed "
                  f"engine.teacher_cache_max_gb={limit / 2**30:g}; computing the teacher online instead", flush=True)
            return None

    def compute(tmp: Path) -> None:
        print(f"[raykd] teacher-output cache: computing the teacher's outputs once (key {key})", flush=True)
        build(task, engine, use_gpu, tmp, local)

    def read(d: Path) -> dict:
        meta = json.loads((d / "meta.json").read_text())
        payload = {"logits": np.load(d / "logits.npy"), "context": meta["context"], "key": key}
        if (d / "hidden.npy").exists():
            payload["hidden"] = np.load(d / "hidden.npy", mmap_mode="r")
        return payload

    _REFS[key] = ray.put(entry(directory, compute, read, what="teacher-output cache"))
    return _REFS[key]


def built_examples(task: TaskSpec) -> int:
    """Teacher forward examples spent building this task's cache entry (0 if not built)."""
    d = cache_dir("teacher_outputs") / cache_key(task, _needs_hidden(task))
    return json.loads((d / "meta.json").read_text())["teacher_forward_examples"] if is_complete(d) else 0


def lookup(cached: dict, idx: np.ndarray, batch: dict) -> dict:
    out = {"logits": torch.from_numpy(np.asarray(cached["logits"][idx], dtype=np.float32))}
    if "hidden" in cached:
        L = batch["input_ids"].shape[1]
        h = torch.from_numpy(np.asarray(cached["hidden"][idx][:, :, :L], dtype=np.float32))
        out["hidden_states"] = tuple(h[:, j] for j in range(h.shape[1]))
    return out
