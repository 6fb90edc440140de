"""Teacher-output cache in a sweep: 8 trials of a small BERT student distilled from the fine-tuned
MiniLM teacher on movie_reviews, run once with the teacher computed online in every trial and once
with the teacher-output cache (one teacher pass over the data for the whole sweep).

    python benchmarks/sweep_cache.py [--subset 2000] [--epochs 1]

Reports the teacher forward passes (examples) counted in each sweep and the wall-clock ratio, as a
table, benchmarks/out/sweep_cache.json and benchmarks/sweep_cache_summary.json. Target: the cached sweep >= 1.5x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raykd.config import parse_config  # noqa: E402


def config(out: Path, cache: bool, subset: int, epochs: int) -> dict:
    return {
        "name": f"sweep_cache_{'on' if cache else 'off'}", "method": "kd", "output_dir": str(out),
        "data": {"name": "movie_reviews", "train_subset": subset, "test_subset": 1000, "max_length": 32},
        "teacher": {"name": "minilm-l6", "label": "minilm-l6-ft", "train": {"epochs": 1, "batch_size": 32, "lr": 5e-5, "schedule": "linear"}},
        "students": [{"name": "bert", "args": {"num_layers": 2, "hidden_size": 128, "num_heads": 2}}],
        "losses": [{"name": "kd", "weight": 1.0, "temperature": 4.0}, {"name": "ce", "weight": 0.5}],
        "train": {"epochs": epochs, "batch_size": 32, "lr": 5e-4},
        "engine": {"num_workers": 1, "teacher_cache": cache},
        "sweep": {"space": {"train.lr": {"grid": [2e-4, 5e-4, 1e-3, 2e-3]}, "losses.0.temperature": {"grid": [2.0, 8.0]}},
                  "max_concurrent_trials": 1},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "sweep_cache.json"))
    args = p.parse_args()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from raykd.engine.task import TaskSpec
    from raykd.distill.kd import ensure_teacher
    from raykd.engine.teacher_cache import built_examples, cache_key
    from raykd.paths import cache_dir
    from raykd.runtime import init_ray
    from raykd.sweep.tune import sweep

    init_ray(num_cpus=2)
    root = Path(args.out).parent / "sweep_cache"
    shutil.rmtree(root, ignore_errors=True)
    # the fine-tuned teacher is shared by both sweeps (trained once, cached) and not timed
    base = parse_config(config(root / "teacher", False, args.subset, args.epochs))
    teacher = ensure_teacher(base.data, base.teacher, base.engine, root / "teacher" / "ray")
    rows = {}
    for cache in (False, True):
        cfg = parse_config(config(root / ("cache" if cache else "online"), cache, args.subset, args.epochs))
        task = TaskSpec(dataset=cfg.data.model_dump(), student={"name": "bert"},
                        teacher={"name": "minilm-l6", "args": {}, "weights": teacher["weights"]},
                        losses=[l.as_dict() for l in cfg.losses], train=cfg.train.model_dump())
        key_dir = cache_dir("teacher_outputs", cache_key(task, False))
        shutil.rmtree(key_dir, ignore_errors=True)  # the cached sweep pays for building its cache
        t0 = time.time()
        df = sweep(cfg)
        df = df[df["method"] != "teacher"]
        wall = time.time() - t0
        in_trials = sum(json.loads(e)["teacher_forward_examples"] or 0 for e in df["extra"])
        build = built_examples(task) if cache else 0
        rows["cache" if cache else "online"] = {"trials": len(df), "wall_s": wall, "teacher_forward_examples": in_trials + build,
                                                "in_trials": in_trials, "cache_build": build,
                                                "best_accuracy": float(df["accuracy"].max())}
    ratio = rows["online"]["wall_s"] / rows["cache"]["wall_s"]
    print(f"\n8-trial sweep, bert 2x128 <- fine-tuned MiniLM-L6 (acc {teacher['accuracy']:.4f}), movie_reviews subset {args.subset}, {args.epochs} epoch(s)")
    print(f"{'sweep':<10}{'trials':>8}{'teacher fwd examples':>24}{'wall s':>10}{'best acc':>10}")
    for k, r in rows.items():
        print(f"{k:<10}{r['trials']:>8}{r['teacher_forward_examples']:>24,.0f}{r['wall_s']:>10.0f}{r['best_accuracy']:>10.4f}")
    print(f"speed-up with the cache: {ratio:.2f}x   target >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'}")
    out = Path(args.out)
    result = json.dumps({"rows": rows, "speedup": ratio, "subset": args.subset, "epochs": args.epochs,
                         "teacher_accuracy": teacher["accuracy"]}, indent=2)
    out.write_text(result)
    (Path(__file__).parent / "sweep_cache_summary.json").write_text(result)  # committed copy
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
