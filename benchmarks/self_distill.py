"""Benchmark: self-distillation and Beta smoothing (Zhang & Sabuncu, NeurIPS 2020) at a small budget.

On fashion_mnist (CNN) and movie_reviews (MLP over frozen MiniLM sentence embeddings), 3 seeds:
CE, label smoothing, confidence penalty, Beta smoothing and self-distillation generations 1..G, judged
by test accuracy, NLL, ECE (15 bins) and the teacher's predictive diversity (mean entropy of its
predictions on the training split). Mean and spread (std over seeds) per method, and the two claims
of the paper checked with paired per-seed differences:

* does self-distillation improve over generation 0 (the CE model it starts from)?
* does Beta smoothing match or beat label smoothing?

The configs are ``configs/sd_fashion_mnist.yaml`` and ``configs/sd_movie_reviews.yaml`` cut down to
fit a shared 2-core machine (training subsets, few epochs; the exact budget is in the JSON). Run
under the heavy-job lock::

    OMP_NUM_THREADS=1 flock /tmp/raykd-heavy.lock python benchmarks/self_distill.py

Writes ``benchmarks/out/self_distill.json`` (everything, per seed) and the small
``benchmarks/self_distill_summary.json``. Each dataset is one ``raykd.run`` of its config: an interrupted
benchmark run again resumes (models with a results row are not retrained); ``--fresh`` starts over,
``--check`` only validates the budgeted configs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

# Budget cuts applied on top of the full configs (documented in the JSON): top-level sections replaced.
BUDGET = {
    "movie_reviews": {"config": "configs/sd_movie_reviews.yaml",
                      "override": {"train": {"epochs": 6, "batch_size": 64, "lr": 0.001, "optimizer": "adamw",
                                             "weight_decay": 0.0001}}},
    "fashion_mnist": {"config": "configs/sd_fashion_mnist.yaml",
                      "override": {"data": {"name": "fashion_mnist", "train_subset": 6000, "test_subset": 2000},
                                   "student": {"name": "cnn", "args": {"widths": [8, 16], "hidden": 32}},
                                   "train": {"epochs": 3, "batch_size": 128, "lr": 0.003, "optimizer": "adamw",
                                             "weight_decay": 0.0001}}},
}


def config_for(dataset: str, generations: int, seeds: list[int], out: Path):
    """The validated run config of one dataset: its config file with the budget cuts."""
    from raykd.config import parse_config

    spec = BUDGET[dataset]
    raw = yaml.safe_load((ROOT / spec["config"]).read_text())
    raw.update(spec["override"])
    raw["self_distill"].update({"generations": generations, "seeds": seeds})
    raw.update({"name": f"bench_sd_{dataset}", "output_dir": str(out), "ray": {"num_cpus": 2}})
    return parse_config(raw, spec["config"])


def paired(metrics: pd.DataFrame, a: str, b: str, col: str) -> dict:
    """Per-seed difference a - b of one metric: mean, std, and how many seeds it was > 0."""
    x = metrics[metrics["method"] == a].set_index("seed")[col]
    y = metrics[metrics["method"] == b].set_index("seed")[col]
    d = (x - y).dropna()
    return {"mean": float(d.mean()), "std": float(d.std(ddof=0)), "positive": int((d > 0).sum()), "seeds": int(len(d))}


def verdicts(metrics: pd.DataFrame, generations: int) -> dict:
    out: dict = {"self_distill_vs_g0": {}, "beta_vs_label_smoothing": {}}
    for g in range(1, generations + 1):
        m = f"self_distill/g{g}"
        out["self_distill_vs_g0"][m] = {c: paired(metrics, m, "ce", c) for c in ("accuracy", "nll", "ece")}
    out["beta_vs_label_smoothing"] = {c: paired(metrics, "beta_smoothing", "label_smoothing", c)
                                      for c in ("accuracy", "nll", "ece")}
    return out


COLS = ["dataset", "method", "seeds", "accuracy_mean", "accuracy_std", "nll_mean", "nll_std", "ece_mean", "ece_std",
        "train_mean_entropy_mean", "teacher_mean_entropy_mean"]


def write_report(report: dict, out_root: Path) -> None:
    """Print the table and the claim checks so far; write the full and the small JSON."""
    table = pd.concat([pd.DataFrame(r["summary"]).assign(dataset=n) for n, r in report["datasets"].items()], ignore_index=True)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(table[COLS].round(4).to_string(index=False))
    for name, r in report["datasets"].items():
        print(f"\n{name}:")
        for m, c in r["claims"]["self_distill_vs_g0"].items():
            a = c["accuracy"]
            print(f"  {m} - g0 accuracy: {a['mean']:+.4f} +/- {a['std']:.4f} (better on {a['positive']}/{a['seeds']} seeds); "
                  f"ECE {c['ece']['mean']:+.4f}; NLL {c['nll']['mean']:+.4f}")
        b = r["claims"]["beta_vs_label_smoothing"]
        print(f"  beta - label smoothing: accuracy {b['accuracy']['mean']:+.4f} +/- {b['accuracy']['std']:.4f} "
              f"(better on {b['accuracy']['positive']}/{b['accuracy']['seeds']}); ECE {b['ece']['mean']:+.4f}; NLL {b['nll']['mean']:+.4f}")
    out = out_root / "self_distill.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float))
    small = {"paper": report["paper"], "machine": report["machine"],
             "datasets": {n: {"budget": r["budget"], "wall_time_s": round(r["wall_time_s"]),
                              "summary": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                                           if k in COLS} for row in r["summary"]],
                              "claims": r["claims"]} for n, r in report["datasets"].items()}}
    (ROOT / "benchmarks" / "self_distill_summary.json").write_text(json.dumps(small, indent=1, default=float))
    print(f"\nwrote {out} and benchmarks/self_distill_summary.json", flush=True)


def dataset_report(cfg, out: Path, wall: float) -> dict:
    metrics = pd.read_csv(out / "self_distill_metrics.csv")
    summary = pd.read_csv(out / "self_distill_summary.csv")
    s = cfg.self_distill
    return {
        "budget": {"data": cfg.data.model_dump(exclude_none=True), "student": cfg.student.model_dump(),
                   "train": cfg.train.model_dump(), "generations": s.generations, "seeds": s.seeds,
                   "text_features": s.text_features if cfg.data.name == "movie_reviews" else None,
                   "note": "subsets and few epochs to fit a shared 2-core CPU machine; not the paper's scale"},
        "wall_time_s": wall,
        "summary": summary.replace({np.nan: None}).to_dict(orient="records"),
        "per_seed": metrics.replace({np.nan: None}).to_dict(orient="records"),
        "claims": verdicts(metrics, s.generations),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(BUDGET), choices=list(BUDGET))
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "self_distill"))
    p.add_argument("--fresh", action="store_true", help="retrain every model (default: resume an earlier attempt)")
    p.add_argument("--check", action="store_true", help="validate the budgeted configs and exit")
    args = p.parse_args()
    configs = {name: config_for(name, args.generations, args.seeds, Path(args.out) / name) for name in args.datasets}
    if args.check:
        for name, cfg in configs.items():
            print(f"{name}: {cfg.data.name}, {cfg.student.display}, {cfg.train.epochs} epochs, "
                  f"{len(cfg.self_distill.seeds)} seeds, {cfg.self_distill.generations} generations: ok")
        return

    import ray

    import raykd

    report: dict = {"paper": "Zhang & Sabuncu, Self-Distillation as Instance-Specific Label Smoothing (NeurIPS 2020)",
                    "machine": f"{os.cpu_count()} CPU cores, shared with other jobs; no GPU", "datasets": {}}
    previous = Path(args.out).parent / "self_distill.json"
    if previous.exists():  # keep the results of datasets this invocation does not rerun
        kept = {n: r for n, r in json.loads(previous.read_text())["datasets"].items() if n not in args.datasets}
        report["datasets"].update(kept)
        if kept:
            print(f"keeping earlier results for {sorted(kept)} from {previous}", flush=True)
    try:
        for name, cfg in configs.items():
            t0 = time.time()
            raykd.run(cfg, fresh=args.fresh)  # a rerun of an interrupted benchmark resumes it
            report["datasets"][name] = dataset_report(cfg, Path(cfg.output_dir), time.time() - t0)
            write_report(report, Path(args.out).parent)  # after every dataset, so a cut-short run keeps its results
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
