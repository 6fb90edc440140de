"""DynaBERT on movie_reviews: every (width, depth) sub-network of one adaptive MiniLM, trained with
DynaBERT's own objective (logits + hidden MSE) vs the CKD objective (KD + WR + LTR).

Both runs start from the same rewired teacher (same importance batches), train on the same subset
for the same budget on the Ray Train engine, and evaluate every sub-network on the same test split.
Each sub-network is a results row with its own parameters and distillation metric DS (a = 0.5, size
by parameters; lower is better). Sub-networks are exported as genuinely smaller models (fewer layers,
heads and FFN neurons), so the table also gives each one's safetensors file size and measured CPU
latency (median ms per forward pass at batch 1 and at batch 32, OMP_NUM_THREADS=1).

Run (about 20-25 minutes on 2 CPU cores once the teacher is cached; ``--check`` only validates):
    flock /tmp/raykd-heavy.lock python benchmarks/dynabert.py
Each objective is one ``method: dynabert`` run (rerunning the command resumes an interrupted one).
Writes benchmarks/out/dynabert/ (results table, plots), benchmarks/out/dynabert.json and the small
benchmarks/dynabert_summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent


CKD_LOSSES = [{"name": "kd", "weight": 1.0, "temperature": 4.0}, {"name": "wr_pair", "weight": 100.0},
              {"name": "wr_triple", "weight": 100.0, "window": 21}, {"name": "ltr_pair", "weight": 100.0},
              {"name": "ltr_triple", "weight": 10.0}]  # as configs/dynabert_ckd.yaml


def config(args, loss: str) -> dict:
    """The run config of one objective: ``dynabert`` (the method's default losses) or ``ckd``."""
    return {"name": f"dynabert-{loss}", "method": "dynabert", "output_dir": str(Path(args.out) / loss),
            "ray": {"num_cpus": 2, "dashboard": False},
            "data": {"name": "movie_reviews", "max_length": 32, "train_subset": args.train_subset, "test_subset": args.test_subset},
            **({"losses": CKD_LOSSES} if loss == "ckd" else {}),
            "train": {"epochs": args.epochs, "batch_size": 32, "lr": args.lr, "optimizer": "adamw",
                      "schedule": "linear", "warmup_fraction": 0.1},
            "dynabert": {"widths": args.widths, "depths": args.depths, "seeds": args.seeds}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    p.add_argument("--depths", nargs="+", type=float, default=[0.5, 1.0])
    p.add_argument("--losses", nargs="+", choices=["dynabert", "ckd"], default=["dynabert", "ckd"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--train-subset", type=int, default=800)
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--out", default=str(HERE / "out" / "dynabert"))
    p.add_argument("--check", action="store_true", help="validate the configs and stop (no training)")
    args = p.parse_args()

    import raykd
    from raykd.config import parse_config

    configs = {loss: config(args, loss) for loss in args.losses}
    if args.check:  # validate the configs only
        for loss, raw in configs.items():
            cfg = parse_config(raw, f"dynabert-{loss}")
            print(f"dynabert-{loss}: valid; {len(cfg.dynabert.widths) * len(cfg.dynabert.depths)} sub-networks, "
                  f"losses {', '.join(l.name for l in cfg.losses)}, output {cfg.output_dir}")
        return
    t_start = time.time()
    frames = [raykd.run(raw).table for raw in configs.values()]  # the teacher is trained once (cached); rerunning resumes
    summarise(frames, args, time.time() - t_start)


def summarise(frames: list, args, wall_s: float) -> None:
    """Print the width x depth table of both objectives (with each exported sub-network's size and CPU
    latency) and write the JSON summaries."""
    import pandas as pd

    df = pd.concat(frames, ignore_index=True)
    subs = df[df["method"] != "teacher"].copy()
    extra = subs["extra"].map(json.loads)
    for key in ("width", "depth", "latency_ms", "latency_ms_batch32"):
        subs[key] = extra.map(lambda e: e.get(key, float("nan")))
    teacher = df[df["method"] == "teacher"].iloc[0]
    print(f"\nmovie_reviews, teacher minilm-l6 {int(teacher['params']):,} params, test accuracy "
          f"{teacher['accuracy']:.4f} (test subset {args.test_subset}); adaptive training on {args.train_subset} "
          f"sentences, {args.epochs} epoch(s), seeds {args.seeds}")
    print("size and latency of each exported sub-network (model.safetensors; CPU, median ms per forward pass)")
    print(f"{'width':>5s} {'depth':>5s} {'params':>11s} {'file MB':>8s} {'ms b=1':>7s} {'ms b=32':>8s} | "
          f"{'DynaBERT loss':>13s} {'DS':>7s} | {'CKD loss':>9s} {'DS':>7s}")
    rows = [summary_row(w, d, g) for (w, d), g in subs.groupby(["width", "depth"])]
    for r in rows:
        print(f"{r['width']:5.2f} {r['depth']:5.2f} {r['params']:11,d} {r['file_mb']:8.2f} {r['latency_ms_b1']:7.2f} "
              f"{r['latency_ms_b32']:8.2f} | {r.get('dynabert_accuracy', float('nan')):13.4f} "
              f"{r.get('dynabert_ds', float('nan')):7.4f} | {r.get('ckd_accuracy', float('nan')):9.4f} "
              f"{r.get('ckd_ds', float('nan')):7.4f}")
    result = {"benchmark": "dynabert", "dataset": "movie_reviews", "teacher": "minilm-l6",
              "teacher_accuracy": float(teacher["accuracy"]), "teacher_params": int(teacher["params"]),
              "train_subset": args.train_subset, "test_subset": args.test_subset, "epochs": args.epochs,
              "seeds": args.seeds, "rows": rows, "wall_s": wall_s}
    (HERE / "out").mkdir(parents=True, exist_ok=True)
    (HERE / "out" / "dynabert.json").write_text(json.dumps(result, indent=2))
    (HERE / "dynabert_summary.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {HERE / 'out' / 'dynabert.json'}")


def summary_row(width: float, depth: float, g) -> dict:
    """One (width, depth) sub-network: its exported size and latency (the same model under either
    objective: the median over its rows), and the accuracy and DS of each objective."""
    r = {"width": width, "depth": depth, "params": int(g["params"].iloc[0]), "file_bytes": int(g["bytes"].iloc[0]),
         "file_mb": float(g["bytes"].iloc[0]) / 1e6, "latency_ms_b1": float(g["latency_ms"].median()),
         "latency_ms_b32": float(g["latency_ms_batch32"].median())}
    for m in ("dynabert-dynabert", "dynabert-ckd"):
        gm = g[g["method"] == m]
        if len(gm):
            key = m.split("-")[1]
            r[f"{key}_accuracy"], r[f"{key}_ds"] = float(gm["accuracy"].mean()), float(gm["ds"].mean())
    return r


if __name__ == "__main__":
    main()
