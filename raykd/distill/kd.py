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

import functools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import Field

from raykd.cache import entry, files_fingerprint
from raykd.config import DataConfig, EngineConfig, LossSpec, ModelSpec, TeacherConfig, check_layer_maps
from raykd.models.features import check_module_paths, check_tokenizers
from raykd.registry import DATASETS
from raykd.data.prepare import fingerprint
from raykd.distill.lm import STUDENT_INITS, check_student_init
from raykd.engine.checkpoint import load_weights, save_weights
from raykd.engine.task import ClassifyTask, TaskSpec, TeacherRef, build_task
from raykd.engine.trainer import Job, finished_jobs, fit, fit_many
from raykd.method import register_method
from raykd.models.size import count_params, cpu_latency_ms, macs_per_example, model_bytes, param_count_on_meta, size_report
from raykd.paths import atomic_write_bytes, cache_dir
from raykd.results import config_hash, make_row
from raykd.schema import Strict


class KDSettings(Strict):
    """``kd:`` what is kd's own (the shared sections say what is distilled into what, and how)."""

    baseline_scratch: bool = Field(False, description="also train each student from scratch with CE on the same budget")
    allow_larger_student: bool = Field(False, description="permit a student with more parameters than its teacher")
    student_init: Literal[STUDENT_INITS] = Field(  # type: ignore[valid-type]
        "random", description="BERT students: random weights, or the teacher's embeddings + uniformly skipped layers (equal widths)")


def check_sizes(teacher: ModelSpec, students: list[ModelSpec], data: DataConfig) -> None:
    """A student with more parameters than its teacher is almost always a config mistake."""
    t = param_count_on_meta(teacher.name, teacher.args, data.num_classes)
    for i, s in enumerate(students):
        n = param_count_on_meta(s.name, s.args, data.num_classes)
        if t is not None and n is not None and n > t:
            raise ValueError(f"students.{i} has {n:,} parameters, more than the teacher's {t:,}; "
                             "shrink it or set kd.allow_larger_student: true")


def check(cfg) -> None:
    if not cfg.kd.allow_larger_student:
        check_sizes(cfg.teacher, cfg.students, cfg.data)
    check_student_init(cfg.kd.student_init, cfg.teacher, cfg.students)
    check_layer_maps(cfg.losses, "losses", cfg.teacher, cfg.students)
    check_module_paths(cfg.losses, "losses", cfg.teacher, cfg.students)
    check_tokenizers(cfg.losses, "losses", cfg.teacher, cfg.students, text=is_text(cfg.data))


def is_text(data: DataConfig) -> bool:
    """Whether a run's data is text (your own data: unknown before it is read, so assumed)."""
    return data.name == "user" or DATASETS.get(data.name).kind == "text"


def model_code_fingerprint(name: str) -> str:
    """Hash of the source of the module that defines a registered model (a code change retrains)."""
    import hashlib
    import inspect

    from raykd import models

    src = inspect.getsource(inspect.getmodule(models.MODELS.get(name)))
    return hashlib.sha256(src.encode()).hexdigest()[:12]


def teacher_task(data: DataConfig, teacher: TeacherConfig) -> TaskSpec:
    return TaskSpec(dataset=data, student=ModelSpec(name=teacher.name, args=teacher.args),
                    losses=[LossSpec(name="ce")], train=teacher.train)


def ensure_teacher(data: DataConfig, teacher: TeacherConfig, engine: EngineConfig, storage: Path) -> dict:
    """Path and test accuracy of the trained teacher, training it once if it is not cached
    (``$RAYKD_HOME/teachers/<key>``: the key hashes architecture, recipe, data and model code). A teacher
    that arrives trained (``teacher.checkpoint``, or a model whose own files hold a head for the data's
    classes: an ``hf`` directory, ``timm`` weights) is evaluated and used as it is (``weights``: None
    when its files are its ``args``; ``model``: the model loaded to evaluate it)."""
    task = teacher_task(data, teacher)
    if teacher.checkpoint:
        t = build_task(task)
        model = load_weights(t.build_student(), teacher.checkpoint)
        ev = t.evaluate(model, t.load_split("test"))
        return {"weights": str(Path(teacher.checkpoint).resolve()), "accuracy": ev["correct"] / ev["count"], "cached": True}
    if any(teacher.args.get(k) for k in ("path", "weights")):
        t = build_task(task)
        model = t.build_student()
        if getattr(model, "raykd_trained_head", False):
            ev = t.evaluate(model, t.load_split("test"))
            print(f"[raykd] teacher {teacher.display}: trained already (its own files), used as it is; "
                  f"test accuracy {ev['correct'] / ev['count']:.4f}", flush=True)
            return {"weights": None, "accuracy": ev["correct"] / ev["count"], "cached": True, "model": model}
        print(f"[raykd] teacher {teacher.display}: its files hold no head for these {t.num_classes} classes; "
              "fine-tuning it as the teacher", flush=True)
    files = files_fingerprint(teacher.args)
    key = config_hash({"teacher": {"name": teacher.name, "args": teacher.args, "train": teacher.train.model_dump()},
                       "data": fingerprint(data), "code": model_code_fingerprint(teacher.name),
                       **({"files": files} if files else {})})  # models that read no files keep their earlier keys
    tdir = cache_dir("teachers") / f"{teacher.name}-{key}"
    built = []

    def train(tmp: Path) -> None:  # runs in one process only; concurrent runs wait for it (raykd.cache)
        print(f"[raykd] training teacher {teacher.display} on {data.name} (cached afterwards)", flush=True)
        t0 = time.time()
        result = fit(task, engine.model_copy(update={"teacher_placement": "colocated"}), f"teacher-{key}", storage,
                     label=f"teacher {teacher.display}")
        model = build_task(task).build_student()
        with result.checkpoint.as_directory() as d:
            load_weights(model, Path(d) / "model.safetensors")
        save_weights(model, tmp / "model.safetensors")
        (tmp / "meta.json").write_text(json.dumps({"accuracy": result.metrics["accuracy"], "train_time_s": time.time() - t0,
                                                   "teacher": teacher.display}))
        built.append(True)

    info = entry(tdir, train, lambda d: json.loads((d / "meta.json").read_text()), what=f"teacher {teacher.display}")
    if not built:
        print(f"[raykd] teacher {teacher.display}: cached ({tdir}), test accuracy {info['accuracy']:.4f}", flush=True)
    return {"weights": str(tdir / "model.safetensors"), "accuracy": info["accuracy"], "cached": not built}


def save_student(model, out: Path, task: ClassifyTask) -> Path:
    """Save a trained student with what it takes to use it: transformers models with ``save_pretrained``
    (the run's class names as ``id2label``/``label2id``, plus the tokenizer for text), other models as
    safetensors plus ``labels.json`` (class names and the image normalisation the student was trained with)."""
    out.mkdir(parents=True, exist_ok=True)
    data = task.data
    id2label = {i: name for i, name in enumerate(data.labels.names)}
    if hasattr(model, "save_pretrained"):
        model.config.id2label = id2label
        model.config.label2id = {name: i for i, name in id2label.items()}
        model.save_pretrained(out)
        if data.kind == "text":
            task.tokenizer("student").save_pretrained(out)  # the ids the student was trained on
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


def load_trained(task: TaskSpec, result) -> "torch.nn.Module":
    """The model of a finished Ray Train run."""
    model = build_task(task).build_student()
    with result.checkpoint.as_directory() as d:
        load_weights(model, Path(d) / "model.safetensors")
    return model


def prepare_teacher(cfg, ctx) -> dict:
    """Train (or load) the teacher, measure it, and record its row (once per run or sweep, not per
    trial). Returns what the students' runs need."""
    teacher = load_teacher(cfg, ctx)
    finish_teacher(cfg, ctx, teacher, measure_teacher(teacher))
    if ctx.trial is None:
        build_teacher_outputs(cfg, teacher)
    return teacher


def load_teacher(cfg, ctx) -> dict:
    """The trained teacher (trained now on a cold cache), its model and an example input, unmeasured."""
    teacher = ensure_teacher(cfg.data, cfg.teacher, cfg.engine, ctx.storage)
    t_task = build_task(teacher_task(cfg.data, cfg.teacher))
    t_model = teacher.pop("model", None)  # loaded already when the teacher arrived trained
    if t_model is None:
        t_model = t_task.build_student()
    if teacher["weights"]:
        load_weights(t_model, teacher["weights"])
    return {**teacher, "model": t_model, "task": t_task, "example": t_task.example_input(t_task.load_split("test"))}


def measure_teacher(teacher: dict) -> dict:
    """Parameters, bytes and MACs of the teacher (the first MAC count imports sympy: about a second)."""
    return size_report(teacher["model"], teacher["example"], latency=False)


def finish_teacher(cfg, ctx, teacher: dict, t_size: dict) -> None:
    """Complete ``teacher`` with its size and the columns every row shares; outside a sweep trial, also
    its CPU latency (measured while nothing else runs), its saved copy and its results row."""
    t_model, t_task = teacher["model"], teacher["task"]
    write_data_description(ctx.out_dir, t_task.data)
    common = dict(dataset=cfg.data.name, teacher=cfg.teacher.display, teacher_params=t_size["params"],
                  teacher_bytes=t_size["bytes"], teacher_macs=t_size["macs"], teacher_accuracy=teacher["accuracy"],
                  a=cfg.metric.a, size=cfg.metric.size, cfg_hash=ctx.run_id.split("/")[0].rsplit("-", 1)[-1],
                  eval_split=t_task.data.eval_split)
    teacher.update(size=t_size, common=common)
    if ctx.trial is not None:  # a sweep records its teacher once, in prepare
        return
    t_size.setdefault("latency_ms", cpu_latency_ms(t_model, teacher["example"]))
    if teacher["weights"] and not (ctx.students_dir / "teacher").exists():
        save_student(t_model, ctx.students_dir / "teacher", t_task)  # reusable: teacher: {name: hf, args: {path: ...}}
    ctx.record([make_row(method="teacher", item="teacher", student=cfg.teacher.display, params=t_size["params"],
                         bytes=t_size["bytes"], macs=t_size["macs"], accuracy=teacher["accuracy"],
                         seed=cfg.teacher.train.seed, extra={"latency_ms": t_size["latency_ms"]}, **common)])


def student_task(cfg, teacher: dict, spec: ModelSpec, losses: list[LossSpec], kind: str) -> TaskSpec:
    """What one student's training is (the engine's description)."""
    return TaskSpec(dataset=cfg.data, student=spec, teacher=TeacherRef(name=cfg.teacher.name, args=cfg.teacher.args,
                                                                      weights=teacher["weights"]),
                    losses=losses, train=cfg.train.model_copy(update={"seed": cfg.train.seed + cfg.seed}),
                    student_init=cfg.kd.student_init if kind == "kd" else "random")


def build_teacher_outputs(cfg, teacher: dict) -> None:
    """With ``engine.teacher_cache``, compute the teacher's outputs now, on the driver, while the whole
    cluster is free (before a sweep's trials hold CPUs: an actor pool started from a trial could wait
    for CPUs the trials hold). Trials whose data and losses need other outputs build their own."""
    if not cfg.engine.teacher_cache or cfg.engine.teacher_placement != "colocated":
        return
    from raykd.engine.teacher_cache import get_or_build
    from raykd.engine.trainer import uses_gpu

    kd_jobs = [j for j in student_jobs(cfg) if j[3] == "kd"]
    if kd_jobs:
        _, spec, losses, kind = kd_jobs[0]
        task = student_task(cfg, teacher, spec, losses, kind)
        if task.uses_teacher and "features" not in task.teacher_needs:
            get_or_build(task, cfg.engine.resolved(), uses_gpu(cfg.engine))


def student_jobs(cfg) -> list[tuple[str, ModelSpec, list[LossSpec], str]]:
    """(item, student, losses, kind) of every student run: distilled, and from scratch as a baseline."""
    jobs = [(f"kd-{i}", s, cfg.losses, "kd") for i, s in enumerate(cfg.students)]
    if cfg.kd.baseline_scratch:
        jobs += [(f"scratch-{i}", s, [LossSpec(name="ce")], "scratch") for i, s in enumerate(cfg.students)]
    return jobs


def job_groups(cfg, jobs: list) -> list[list]:
    """Jobs that train in one worker group, in turn (the group starts once for all of them). A teacher
    streamed from an actor pool feeds one distilled student per group."""
    if cfg.engine.teacher_placement != "actor_pool":
        return [jobs]
    return [[j] for j in jobs if j.task.uses_teacher] + ([rest] if (rest := [j for j in jobs if not j.task.uses_teacher]) else [])


@register_method("kd", settings=KDSettings, check=check, prepare=prepare_teacher, trial_in_process=True,
                 sections={"data": None, "teacher": None, "students": None, "losses": None, "train": None,
                           "engine": None, "sweep": None})
def run(cfg, ctx) -> list[dict]:
    """Teacher -> students distillation on Ray Train (CNNs on images, BERTs on text)."""
    teacher = load_teacher(cfg, ctx)
    size = cfg.metric.size  # DS of every epoch, reported to Ray (and to Tune schedulers in a sweep)
    # Outside a sweep trial the driver counts the teacher's MACs in a thread while the worker group starts
    # (the first count imports sympy, about a second); the DS of each epoch needs only the metric's size.
    # With the metric on MACs every count is made here, so two threads never count at once.
    overlap = ctx.trial is None and size != "macs"
    if ctx.trial is None:
        build_teacher_outputs(cfg, teacher)  # before any student reads them
    size_t = quick_size(teacher["model"], teacher["example"], size)
    todo, about = [], {}  # jobs to train; item -> (kind, student spec, example input)
    for item, spec, losses, kind in student_jobs(cfg):
        if ctx.done(item) is not None:
            print(f"[raykd] {kind} student {spec.display}: done in an earlier attempt", flush=True)
            continue
        task = student_task(cfg, teacher, spec, losses, kind)
        s_task = build_task(task)
        example = s_task.example_input(s_task.load_split("test"))  # the student's own token ids
        about[item] = (kind, spec, example)
        ds_ref = {"size_s": quick_size(s_task.build_student(), example, size), "size_t": size_t,
                  "acc_t": teacher["accuracy"], "a": cfg.metric.a}
        todo.append(Job(item, task, f"{kind} {spec.display}", ds_ref))
    with ThreadPoolExecutor(1, thread_name_prefix="raykd-measure") as pool:
        t_size = pool.submit(measure_teacher, teacher) if overlap else None
        # the teacher's row, once, after the first group has trained (and before any student's row)
        finish = functools.cache(lambda: finish_teacher(cfg, ctx, teacher, t_size.result() if t_size else measure_teacher(teacher)))
        _train_students(cfg, ctx, teacher, todo, about, finish)
    return ctx.rows().to_dict("records")


def quick_size(model, example, which: str) -> float:
    """One size measure of ``model`` (``params``, ``bytes`` or ``macs``): the one the DS metric uses."""
    if which == "macs":
        return macs_per_example(model, example)
    return count_params(model) if which == "params" else model_bytes(model, 4)


def _train_students(cfg, ctx, teacher: dict, todo: list, about: dict, finish) -> None:
    """Train ``todo`` (in one worker group, or one per streamed student), then record each student's row.
    ``finish`` completes the teacher's facts (its row too); it is called after every group and at the end,
    and does its work once."""
    engine = cfg.engine.resolved(concurrent=ctx.trial is not None)
    for group in job_groups(cfg, todo):
        if not group:
            continue
        print(f"[raykd] training {len(group)} student(s) in turn on {engine.num_workers} worker(s) x "
              f"{engine.cpus_per_worker:g} CPU(s): " + ", ".join(j.label for j in group), flush=True)
        name = ctx.ray_name("students" if len(group) == len(todo) else group[0].item)
        result = fit_many(group, cfg.engine, name, ctx.storage, callbacks=ctx.train_callbacks([j.item for j in group]),
                          in_trial=ctx.trial_in_process, build_here=ctx.trial is not None)
        finish()
        with finished_jobs(result) as finished:
            for job in group:
                kind, spec, example = about[job.item]
                m = finished[job.item].metrics
                s_task = build_task(job.task)
                student = s_task.build_student()
                load_weights(student, finished[job.item].weights)
                save_student(student, ctx.students_dir / job.item, s_task)
                s = size_report(student, example)
                row = make_row(method=kind, item=job.item, student=spec.display, params=s["params"], bytes=s["bytes"],
                               macs=s["macs"], accuracy=m["accuracy"], wall_time_s=m.get("job_wall_s"), seed=job.task.train.seed,
                               extra={"latency_ms": s["latency_ms"], "losses": job.task.loss_dicts(), "epochs": cfg.train.epochs,
                                      "samples_per_s": m.get("samples_per_s"),
                                      "teacher_forward_examples": m.get("teacher_forward_examples"),
                                      "placement": cfg.engine.teacher_placement, "workers": engine.num_workers,
                                      "cpus_per_worker": engine.cpus_per_worker}, **teacher["common"])
                ctx.record([row])
                print(f"[raykd] {kind} {spec.display}: accuracy {row['accuracy']:.4f} (teacher {teacher['accuracy']:.4f}), "
                      f"params {row['params']:,}, DS {row['ds']:.4f}, {row['wall_time_s']:.0f}s", flush=True)
    finish()  # every student was done in an earlier attempt: the teacher's row still
