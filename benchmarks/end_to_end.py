"""End to end: what a whole raykd run costs against the same training in one plain PyTorch process.

Each row times a whole command, from process start to exit (imports, data, Ray start-up, training,
evaluation, saving, the results table), each in its own fresh process:

* ``demo``: ``raykd run configs/mnist_kd.yaml`` (teacher cached, and, in a second row, trained in the
  run on an empty teacher cache) against ``python benchmarks/end_to_end.py --plain ...``: the same
  students (and teacher) with the same data, batches, epochs, seeds, learning-rate schedule, losses and
  frozen-teacher outputs, trained in turn in one process with as many threads as the machine has cores.
* ``sweep``: ``raykd sweep configs/mnist_sweep.yaml`` (8 trials, teacher cached) against the 8 trials'
  training in one plain process.

    python benchmarks/end_to_end.py                    # the demo and the sweep, then the summary
    python benchmarks/end_to_end.py --sizes 6000 20000 60000 --workers 1 2   # how cost grows

Prints a table and writes ``benchmarks/end_to_end_summary.json``: ``ratio`` is raykd's demo wall time
over the plain process's (teacher cached), ``sweep_ratio`` the same for the sweep; each the median of
``--repeats`` pairs (default 3; the other cases run once). Accuracies of both
sides are printed, so a faster side that learned less would show.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------------------
# The plain side: one process, no Ray
# ------------------------------------------------------------------------------------------------

def plain_fit(spec, threads: int, teacher_logits=None) -> dict:
    """Train one model as the engine does (seeded permutation per epoch, sorted batches, per-step
    learning-rate schedule, the frozen teacher's forward per batch, or its outputs computed once when
    the config caches them) in this process."""
    import numpy as np
    import torch

    from raykd.engine.task import build_task, lr_at, make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(spec.train.seed)
    np.random.seed(spec.train.seed % (2**32))
    task = build_task(spec)
    train, test = task.load_split("train"), task.load_split("test")
    student = task.build_student()
    teacher = task.build_teacher() if teacher_logits is None else None
    loss_fn = task.build_loss(student, teacher)
    needs = loss_fn.teacher_needs
    opt = make_optimizer(list(student.parameters()) + list(loss_fn.parameters()), spec.train)
    n, bs, epochs = len(train["label"]), spec.train.batch_size, spec.train.epochs
    total, step, t0 = math.ceil(n / bs) * epochs, 0, time.perf_counter()
    for epoch in range(epochs):
        student.train()
        perm = np.random.default_rng(spec.train.seed * 1000 + epoch).permutation(n)
        for i in range(0, n, bs):
            idx = np.sort(perm[i:i + bs])
            batch = task.batch(train, idx)
            if teacher_logits is not None:
                t_out = {"logits": torch.from_numpy(teacher_logits[idx].astype(np.float32))}
            else:
                t_out = task.teacher_forward(teacher, batch, needs) if teacher is not None else None
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, spec.train.lr, spec.train.schedule, spec.train.warmup_fraction)
            loss, _ = task.loss(student, loss_fn, batch, t_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(student.parameters(), spec.train.grad_clip)
            opt.step()
            step += 1
        ev = task.evaluate(student, test)
    return {"model": student, "accuracy": ev["correct"] / ev["count"], "train_s": time.perf_counter() - t0}


def teacher_outputs(spec, threads: int):
    """The frozen teacher's logits on the training split, computed once (as ``engine.teacher_cache`` does)."""
    import numpy as np
    import torch

    from raykd.engine.task import build_task

    torch.set_num_threads(threads)
    task = build_task(spec)
    train, teacher = task.load_split("train"), task.build_teacher()
    n, bs = len(train["label"]), spec.train.batch_size * 4
    out = [task.teacher_forward(teacher, task.batch(train, np.arange(i, min(n, i + bs))), {"logits"})["logits"]
           for i in range(0, n, bs)]
    return torch.cat(out).to(torch.float16).numpy()


def plain_main(plan_file: Path, threads: int, out: Path) -> None:
    """``--plain PLAN``: the plan's teacher (when it is trained in the run) and students, in turn, in this
    process; imports only raykd's model, data and loss code (no Ray)."""
    import pickle

    from raykd.engine.checkpoint import save_weights

    plan = pickle.loads(plan_file.read_bytes())
    timings, weights = {}, plan["teacher_weights"]
    if plan["teacher_task"] is not None:
        r = plain_fit(plan["teacher_task"], threads)
        weights = str(save_weights(r["model"], out / "teacher" / "model.safetensors"))
        timings["teacher"] = {"accuracy": r["accuracy"], "train_s": r["train_s"]}
        print(f"[plain] teacher: accuracy {r['accuracy']:.4f}, {r['train_s']:.1f}s", flush=True)
    logits = {}
    for name, spec in plan["jobs"]:
        spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"weights": weights})})
        cached = None
        if plan["teacher_cache"] and spec.uses_teacher:
            key = spec.dataset.model_dump_json()
            if key not in logits:
                logits[key] = teacher_outputs(spec, threads)
            cached = logits[key]
        r = plain_fit(spec, threads, cached)
        save_weights(r["model"], out / "students" / f"{len(timings)}" / "model.safetensors")
        timings[name] = {"accuracy": r["accuracy"], "train_s": r["train_s"]}
        print(f"[plain] {name}: accuracy {r['accuracy']:.4f}, {r['train_s']:.1f}s", flush=True)
    (out / "plain.json").write_text(json.dumps(timings, indent=1))


def make_plan(config: str, overrides: list[str], train_teacher: bool) -> dict:
    """What the plain process trains: the config's students (every grid point of a sweep, one student
    each, as the sweep's trials), with the same task descriptions raykd's workers get."""
    import itertools

    from raykd.config import load_config, parse_config
    from raykd.distill.kd import ensure_teacher, student_jobs, teacher_task
    from raykd.engine.task import TaskSpec, TeacherRef
    from raykd.sweep.tune import trial_config

    cfg = load_config(config, overrides)
    configs = [cfg]
    if getattr(cfg, "sweep", None) is not None:
        base, space = cfg.model_dump(mode="json"), cfg.sweep.space
        grids = [next(iter(space[k].values())) for k in space]
        configs = [parse_config(trial_config(base, dict(zip(space, combo))), "plain trial") for combo in itertools.product(*grids)]
    weights = None if train_teacher else ensure_teacher(cfg.data, cfg.teacher, cfg.engine, Path(tempfile.mkdtemp()))["weights"]
    jobs = []
    for c in configs:
        for item, spec, losses, kind in student_jobs(c):
            temps = "/".join(f"T={l.params['temperature']}" for l in losses if "temperature" in l.params)
            jobs.append((f"{kind} {spec.display} {temps}".strip(), TaskSpec(
                dataset=c.data, student=spec, losses=losses, train=c.train.model_copy(update={"seed": c.train.seed + c.seed}),
                teacher=TeacherRef(name=c.teacher.name, args=c.teacher.args, weights=weights))))
    return {"teacher_task": teacher_task(cfg.data, cfg.teacher) if train_teacher else None, "teacher_weights": weights,
            "jobs": jobs, "teacher_cache": cfg.engine.teacher_cache}


# ------------------------------------------------------------------------------------------------
# The driver: times whole commands
# ------------------------------------------------------------------------------------------------

def timed(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return wall


def raykd_accuracies(out_dir: Path) -> dict:
    import pandas as pd

    df = pd.read_csv(out_dir / "results.csv")
    rows = [r for r in df.itertuples() if r.method != "teacher"]
    temps = ["/".join(f"T={l['temperature']}" for l in json.loads(r.extra).get("losses", []) if "temperature" in l) for r in rows]
    return {f"{r.method} {r.student} {t}".strip(): float(r.accuracy) for r, t in zip(rows, temps)}


def home_view(home: Path, keep: tuple[str, ...]) -> Path:
    """A RAYKD_HOME that shares ``keep`` (cache parts: datasets, wheels, teachers) with ``home`` and
    holds nothing else: what the run must then build, it builds and pays for in the timed command."""
    tmp = Path(tempfile.mkdtemp(prefix="raykd-e2e-home-"))
    for part in keep:
        if (home / part).exists():
            (tmp / part).symlink_to(home / part)
    return tmp


def case(name: str, config: str, overrides: list[str], threads: int, env: dict, work: Path, sweep: bool = False,
         train_teacher: bool = False, repeats: int = 1) -> dict:
    """Time the raykd command and the plain process on the same plan, ``repeats`` pairs (plain first in
    each pair); the case's times are the medians, every time is kept."""
    import pickle

    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    raykd_out, plain_out = work / f"{slug}-raykd", work / f"{slug}-plain"
    plain_out.mkdir(parents=True, exist_ok=True)
    plan_file = plain_out / "plan.pkl"
    plan_file.write_bytes(pickle.dumps(make_plan(config, overrides, train_teacher)))
    sets = [a for o in overrides for a in ("--set", o)]
    raykd_cmd = [str(Path(sys.executable).parent / "raykd"), "sweep" if sweep else "run", config, "--fresh",
                 "--output-dir", str(raykd_out), *sets]
    plain_cmd = [sys.executable, str(Path(__file__).resolve()), "--plain", str(plan_file), "--threads", str(threads),
                 "--plain-out", str(plain_out)]
    # the run builds what the plain process computes: the teacher (when trained in the run) and the
    # teacher-output cache; data and, when cached, the trained teacher are shared
    keep = ("datasets", "wheels") if train_teacher else ("datasets", "wheels", "teachers")
    times: dict[str, list[float]] = {"plain": [], "raykd": []}
    for _ in range(repeats):
        for side, cmd in (("plain", plain_cmd), ("raykd", raykd_cmd)):
            e = {**env, "RAYKD_HOME": str(home_view(Path(env["RAYKD_HOME"]), keep))} if side == "raykd" else env
            times[side].append(timed(cmd, e, work / f"{slug}-{side}.log"))
            print(f"  {name}: {side} {times[side][-1]:.1f}s", flush=True)
    walls = {side: statistics.median(t) for side, t in times.items()}
    plain = json.loads((plain_out / "plain.json").read_text())
    log = (work / f"{slug}-raykd.log").read_text()
    return {"case": name, "config": config, "overrides": overrides, "raykd_s": round(walls["raykd"], 2),
            "plain_s": round(walls["plain"], 2), "ratio": round(walls["raykd"] / walls["plain"], 3),
            "raykd_s_each": [round(t, 2) for t in times["raykd"]], "plain_s_each": [round(t, 2) for t in times["plain"]],
            "raykd_command": " ".join(["raykd", *raykd_cmd[1:]]), "plain_train_s": round(sum(v["train_s"] for v in plain.values()), 2),
            "plain_accuracy": {k: v["accuracy"] for k, v in plain.items()}, "raykd_accuracy": raykd_accuracies(raykd_out),
            "raykd_console_lines": len(log.splitlines())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plain", metavar="PLAN", help=argparse.SUPPRESS)
    p.add_argument("--plain-out", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the plain process (default: all cores)")
    p.add_argument("--demo-config", default="configs/mnist_kd.yaml")
    p.add_argument("--sweep-config", default="configs/mnist_sweep.yaml")
    p.add_argument("--skip", nargs="*", default=[], choices=["demo", "demo-teacher", "sweep"])
    p.add_argument("--sizes", nargs="*", type=int, default=[], help="also the demo at these training-set sizes")
    p.add_argument("--workers", nargs="*", type=int, default=[], help="... with these engine.num_workers")
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs of the demo and the sweep (medians; other cases run once)")
    p.add_argument("--summary", default=str(ROOT / "benchmarks" / "end_to_end_summary.json"))
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "end_to_end"))
    args = p.parse_args()
    if args.plain:
        plain_main(Path(args.plain), args.threads, Path(args.plain_out))
        return

    from raykd.paths import raykd_home

    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAYKD_HOME": str(raykd_home())}
    os.environ.update(env)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # data and trained teachers cached first, untimed (the demo's teacher, the sweep's and any subset's)
    from raykd.config import load_config
    from raykd.distill.kd import ensure_teacher
    from raykd.runtime import init_ray

    init_ray()
    for config, sets in [(args.demo_config, []), (args.sweep_config, [])] + [(args.demo_config, [f"data.train_subset={n}"]) for n in args.sizes]:
        c = load_config(config, sets)
        ensure_teacher(c.data, c.teacher, c.engine, work / "warm")
    import ray

    ray.shutdown()
    rows = []
    if "demo" not in args.skip:
        rows.append(case("demo", args.demo_config, [], args.threads, env, work, repeats=args.repeats))
    if "sweep" not in args.skip:
        rows.append(case("sweep (8 trials)", args.sweep_config, [], args.threads, env, work, sweep=True, repeats=args.repeats))
    if "demo-teacher" not in args.skip:
        rows.append(case("demo, teacher trained in the run", args.demo_config, [], args.threads, env, work, train_teacher=True))
    for size in args.sizes:
        for workers in args.workers or [None]:
            sets = [f"data.train_subset={size}"] + ([f"engine.num_workers={workers}"] if workers else [])
            rows.append(case(f"demo, {size:,} rows" + (f", {workers} worker(s)" if workers else ""), args.demo_config, sets,
                             args.threads, env, work))
    print(f"\n{'case':<40}{'raykd s':>9}{'plain s':>9}{'ratio':>7}  accuracies raykd | plain")
    for r in rows:
        acc_r = " ".join(f"{v:.3f}" for v in r["raykd_accuracy"].values())
        acc_p = " ".join(f"{v:.3f}" for k, v in r["plain_accuracy"].items() if k != "teacher")
        print(f"{r['case']:<40}{r['raykd_s']:>9.1f}{r['plain_s']:>9.1f}{r['ratio']:>7.2f}  {acc_r} | {acc_p}")
    by = {r["case"]: r for r in rows}
    summary = {"ratio": by["demo"]["ratio"] if "demo" in by else None,
               "sweep_ratio": by["sweep (8 trials)"]["ratio"] if "sweep (8 trials)" in by else None, "target": 1.3,
               "cases": rows, "threads": args.threads, "cpus": os.cpu_count(), "machine": platform.platform(),
               "command": " ".join(["python benchmarks/end_to_end.py", *sys.argv[1:]])}
    Path(args.summary).write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.summary}")


if __name__ == "__main__":
    main()
