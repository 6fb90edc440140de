"""A sixth method in one file: born-again networks (Furlanello et al., ICML 2018).

A student of the teacher's own architecture is distilled from the trained teacher, generation after
generation; each generation is the teacher of the next. The paper reports born-again students that
beat their teachers. Everything but the algorithm comes from raykd: the config sections, the Ray
Train engine, the teacher cache, the results table, resume and TensorBoard.

Use it as a plugin (nothing in raykd changes)::

    raykd run docs/examples/born_again.yaml --plugin docs/examples/born_again.py

or drop it into ``raykd/distill/`` to make it built in (the package imports every module there).
"""

from __future__ import annotations

from pydantic import Field

from raykd.config import ModelSpec
from raykd.distill.kd import ensure_teacher, load_trained, save_student
from raykd.engine.task import TaskSpec, TeacherRef, build_task
from raykd.engine.trainer import fit
from raykd.method import register_method
from raykd.models.size import size_report
from raykd.results import make_row
from raykd.schema import Strict


class BornAgainSettings(Strict):
    """``born_again:`` what is this method's own."""

    generations: int = Field(2, ge=1, le=10, description="born-again generations after the teacher")


@register_method("born_again", settings=BornAgainSettings,
                 sections={"data": None, "teacher": None, "losses": None, "train": None, "engine": None})
def run(cfg, ctx) -> list[dict]:
    """Born-again networks: the teacher's architecture distilled from itself, generation by generation."""
    teacher = ensure_teacher(cfg.data, cfg.teacher, cfg.engine, ctx.storage)
    arch = ModelSpec(name=cfg.teacher.name, args=cfg.teacher.args)
    weights, accuracy = teacher["weights"], teacher["accuracy"]
    rows = []
    for g in range(1, cfg.born_again.generations + 1):
        item = f"generation-{g}"
        task = TaskSpec(dataset=cfg.data, student=arch, losses=cfg.losses, train=cfg.train,
                        teacher=TeacherRef(name=arch.name, args=arch.args, weights=weights))
        done = ctx.done(item)
        if done is None:
            result = fit(task, cfg.engine, ctx.ray_name(item), ctx.storage, label=f"born-again {g}",
                         callbacks=ctx.train_callbacks(item))
            model = load_trained(task, result)
            save_student(model, ctx.students_dir / item, build_task(task))
            t = build_task(task)
            size = size_report(model, t.example_input(t.load_split("test")), latency=False)
            done = make_row(method="born_again", item=item, dataset=cfg.data.name, teacher=f"generation {g - 1}",
                            student=f"{arch.display} (generation {g})", params=size["params"],
                            accuracy=result.metrics["accuracy"], teacher_accuracy=accuracy, teacher_params=size["params"],
                            a=cfg.metric.a, seed=cfg.train.seed, extra={"generation": g})
            ctx.record([done])
        rows.append(done)
        # the next generation learns from this one (its weights are on disk, so a rerun finds them)
        weights, accuracy = str(ctx.students_dir / item / "model.safetensors"), float(done["accuracy"])
    return rows
