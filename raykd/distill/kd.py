"""Teacher -> student distillation (``method: kd``), the platform's default experiment.

1. Teacher: trained with cross-entropy on the engine (or loaded from ``teacher.checkpoint``), and
   cached under ``$RAYKD_HOME/teachers/<key>`` where the key hashes the teacher's architecture,
   training recipe and dataset, so later runs reuse it.
2. Each student: one Ray Train run minimising the configured weighted loss, e.g.
   ``kd`` (T^2 * KL(p_t^T || p_s^T)) + ``ce`` (-log p_s(y)).
3. Optionally the same student from scratch (CE only, same budget) as a baseline.
4. One results row per model (size, MACs, accuracy, DS), a table and an accuracy-vs-size plot.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from raykd.cache import entry
from raykd.config import DistillConfig
from raykd.distill.base import TaskSpec, build_method
from raykd.engine.checkpoint import load_weights, save_weights
from raykd.engine.trainer import fit
from raykd.models.size import size_report
from raykd.paths import atomic_write_bytes, cache_dir
from raykd.results import append_rows, config_hash, make_row


def dataset_fingerprint(data: dict) -> dict:
    """What identifies the training data: registry name + subset, or a user file's size and mtime."""
    fp = {k: data.get(k) for k in ("name", "train_subset", "test_subset", "max_length", "format",
                                   "text_column", "label_column", "image_shape", "num_classes", "split_seed")}
    if data.get("name") == "user" and not data.get("test_path"):
        fp["test_fraction"] = data.get("test_fraction")  # the hold-out decides which rows are trained on
    for key in ("path", "test_path"):
        if data.get(key):
            p = Path(data[key]).expanduser()
            st = p.stat() if p.exists() else None
            fp[key] = [str(p.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None]
    return fp


def model_code_fingerprint(name: str) -> str:
    """Hash of the source of the module that defines a registered model (a code change retrains)."""
    import hashlib
    import inspect

    from raykd import models

    src = inspect.getsource(inspect.getmodule(models.MODELS.get(name)))
    return hashlib.sha256(src.encode()).hexdigest()[:12]


def teacher_task(cfg: DistillConfig) -> TaskSpec:
    t = cfg.teacher
    return TaskSpec(dataset=cfg.data.model_dump(), student={"name": t.name, "args": t.args},
                    losses=[{"name": "ce", "weight": 1.0}], train=t.train.model_dump())


def ensure_teacher(cfg: DistillConfig, storage: Path) -> dict:
    """Path and test accuracy of the trained teacher, training it once if it is not cached."""
    task = teacher_task(cfg)
    if cfg.teacher.checkpoint:
        method = build_method(task)
        model = load_weights(method.build_student(), cfg.teacher.checkpoint)
        test = method.load_split("test")
        ev = method.evaluate(model, test)
        return {"weights": str(Path(cfg.teacher.checkpoint).resolve()), "accuracy": ev["correct"] / ev["count"], "cached": True}
    key = config_hash({"teacher": {"name": cfg.teacher.name, "args": cfg.teacher.args, "train": cfg.teacher.train.model_dump()},
                       "data": dataset_fingerprint(cfg.data.model_dump()), "code": model_code_fingerprint(cfg.teacher.name)})
    tdir = cache_dir("teachers") / f"{cfg.teacher.name}-{key}"
    built = []

    def train(tmp: Path) -> None:  # runs in one process only; concurrent runs wait for it (raykd.cache)
        print(f"[raykd] training teacher {cfg.teacher.display} on {cfg.data.name} (cached afterwards)", flush=True)
        t0 = time.time()
        result = fit(task, cfg.engine.model_dump() | {"teacher_placement": "colocated"}, f"teacher-{key}", storage,
                     label=f"teacher {cfg.teacher.display}")
        model = build_method(task).build_student()
        with result.checkpoint.as_directory() as d:
            load_weights(model, Path(d) / "model.safetensors")
        save_weights(model, tmp / "model.safetensors")
        (tmp / "meta.json").write_text(json.dumps({"accuracy": result.metrics["accuracy"], "train_time_s": time.time() - t0,
                                                   "teacher": cfg.teacher.display}))
        built.append(True)

    info = entry(tdir, train, lambda d: json.loads((d / "meta.json").read_text()), what=f"teacher {cfg.teacher.display}")
    if not built:
        print(f"[raykd] teacher {cfg.teacher.display}: cached ({tdir}), test accuracy {info['accuracy']:.4f}", flush=True)
    return {"weights": str(tdir / "model.safetensors"), "accuracy": info["accuracy"], "cached": not built}


def save_student(model, out: Path, method) -> Path:
    """Save a trained student with what it takes to use it: transformers models with ``save_pretrained``
    (the run's class names as ``id2label``/``label2id``, plus the tokenizer for text), other models as
    safetensors plus ``labels.json`` (class names and the image normalisation the student was trained with)."""
    out.mkdir(parents=True, exist_ok=True)
    data = method.data
    id2label = {i: name for i, name in enumerate(data.labels.names)}
    if hasattr(model, "save_pretrained"):
        model.config.id2label = id2label
        model.config.label2id = {name: i for i, name in id2label.items()}
        model.save_pretrained(out)
        if data.kind == "text":
            from raykd.models.bert import tokenizer

            tokenizer().save_pretrained(out)
    else:
        save_weights(model, out / "model.safetensors")
        atomic_write_bytes(out / "labels.json", json.dumps(
            {"id2label": id2label, "normalisation": data.norm,
             "input": "uint8 pixels / 255, then (x - mean) / std per channel" if data.norm else "token ids"},
            indent=1).encode())
    return out


def write_data_description(out: Path, data) -> None:
    """``OUTPUT_DIR/data.json``: which rows were evaluated on, the class names, the image normalisation."""
    atomic_write_bytes(out / "data.json", json.dumps(data.describe(), indent=1).encode())


def run(cfg: DistillConfig) -> "pd.DataFrame":
    """Run the experiment; returns the results table (also written to ``cfg.output_dir``)."""
    out = Path(cfg.output_dir).resolve()
    storage = Path(cfg.engine.storage_path or out / "ray").resolve()
    out.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg.model_dump())
    run_id = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    teacher = ensure_teacher(cfg, storage)

    t_method = build_method(teacher_task(cfg))
    t_model = load_weights(t_method.build_student(), teacher["weights"])
    test_arrays = t_method.load_split("test")
    example = t_method.example_input(test_arrays)
    t_size = size_report(t_model, example)
    write_data_description(out, t_method.data)
    eval_split = t_method.data.eval_split

    jobs = [(s, cfg.losses, "kd") for s in cfg.students]
    if cfg.baseline_scratch:
        jobs += [(s, [], "scratch") for s in cfg.students]
    rows = [make_row(method="teacher", dataset=cfg.data.name, teacher=cfg.teacher.display, student=cfg.teacher.display,
                     params=t_size["params"], bytes=t_size["bytes"], macs=t_size["macs"], accuracy=teacher["accuracy"],
                     teacher_params=t_size["params"], teacher_bytes=t_size["bytes"], teacher_macs=t_size["macs"],
                     teacher_accuracy=teacher["accuracy"], a=cfg.metric.a, size=cfg.metric.size, seed=cfg.teacher.train.seed,
                     cfg_hash=chash, run_id=run_id, eval_split=eval_split, extra={"latency_ms": t_size["latency_ms"]})]
    append_rows(out, rows)
    for i, (spec, losses, kind) in enumerate(jobs):
        label = spec.display
        loss_dicts = [l.as_dict() for l in losses] or [{"name": "ce", "weight": 1.0}]
        task = TaskSpec(dataset=cfg.data.model_dump(), student={"name": spec.name, "args": spec.args},
                        teacher={"name": cfg.teacher.name, "args": cfg.teacher.args, "weights": teacher["weights"]},
                        losses=loss_dicts, train=cfg.train.model_dump() | {"seed": cfg.train.seed + cfg.seed},
                        extra={"student_init": cfg.student_init if kind == "kd" else "random"})
        print(f"[raykd] [{i + 1}/{len(jobs)}] {kind} student {label}: "
              f"{' + '.join(str(d.get('weight', 1)) + '*' + d['name'] for d in loss_dicts)}", flush=True)
        t0 = time.time()
        result = fit(task, cfg.engine.model_dump(), f"{cfg.name}-{kind}-{i}-{chash}", storage, label=f"{kind} {label}")
        wall = time.time() - t0
        method = build_method(task)
        student = method.build_student()
        with result.checkpoint.as_directory() as d:
            load_weights(student, Path(d) / "model.safetensors")
        save_student(student, out / "students" / f"{kind}-{i}", method)
        s = size_report(student, example)
        row = make_row(method=kind, dataset=cfg.data.name, teacher=cfg.teacher.display, student=label,
                       params=s["params"], bytes=s["bytes"], macs=s["macs"], accuracy=result.metrics["accuracy"],
                       teacher_params=t_size["params"], teacher_bytes=t_size["bytes"], teacher_macs=t_size["macs"],
                       teacher_accuracy=teacher["accuracy"], a=cfg.metric.a, size=cfg.metric.size, wall_time_s=wall,
                       seed=task.train["seed"], cfg_hash=chash, run_id=run_id, eval_split=eval_split,
                       extra={"latency_ms": s["latency_ms"], "losses": loss_dicts, "epochs": cfg.train.epochs,
                              "samples_per_s": result.metrics.get("samples_per_s"),
                              "placement": cfg.engine.teacher_placement, "workers": cfg.engine.num_workers})
        df = append_rows(out, [row])
        print(f"[raykd] {kind} {label}: accuracy {row['accuracy']:.4f} (teacher {teacher['accuracy']:.4f}), "
              f"params {row['params']:,}, DS {row['ds']:.4f}, {wall:.0f}s", flush=True)
    from raykd.report import report

    df = df[df["run_id"] == run_id]
    report(out, df=df, a=cfg.metric.a, size=cfg.metric.size)
    return df
