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

**The overfitting regime** (issue 16, item 2): the paper's claims are about models that overfit, which the
short budget above does not reach. ``--regime overfit`` trains on few rows for many epochs (``OVERFIT``
below): 3,000 Fashion-MNIST images, a [32, 64] CNN (hidden 128), 25 epochs, 5,000 validation rows, the
full 10,000-image test split; 2,000 movie reviews, a 2 x 512 MLP over the MiniLM embeddings, 50 epochs at
lr 1e-4, 1,000 validation rows. Every model is its best validation-accuracy epoch (the authors' protocol).
The report adds, per dataset, CE's validation NLL by epoch (mean over seeds; where its minimum is and how
far it rose after it: the evidence that CE overfits) and a verdict per claim and metric ("holds" / "does not
hold" / "undecided"; the rule is in the JSON) from the paired per-seed differences. About 30-35 minutes on
2 otherwise idle cores (Fashion-MNIST ~26, movie reviews ~5; a CE pilot took ~4.1 s per Fashion-MNIST epoch)::

    OMP_NUM_THREADS=1 flock /tmp/raykd-heavy.lock python benchmarks/self_distill.py --regime overfit

It writes ``benchmarks/out/self_distill_overfit.json`` and ``benchmarks/self_distill_overfit_summary.json``
(the short regime's files are not touched). ``--epochs``, ``--seeds``, ``--generations`` and ``--variants``
cut a run down for a pilot or a smoke test (which still writes the summary JSON: delete it afterwards),
e.g. ``--regime overfit --variants ce --seeds 0 --out /tmp/sd_pilot`` (CE's validation NLL curve alone) or
``--regime overfit --epochs 2 --seeds 0 --generations 1 --out /tmp/sd_smoke``.
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

# The overfitting regime: few training rows, a model large enough to memorise them and enough epochs for
# CE's validation NLL to rise well past its minimum (chosen with a CE-only pilot; see the module docstring).
OVERFIT = {
    "fashion_mnist": {"config": "configs/sd_fashion_mnist.yaml",
                      "override": {"data": {"name": "fashion_mnist", "train_subset": 3000, "validation": 5000},
                                   "student": {"name": "cnn", "args": {"widths": [32, 64], "hidden": 128}},
                                   "train": {"epochs": 25, "batch_size": 128, "lr": 0.002, "optimizer": "adamw",
                                             "weight_decay": 0.0001}}},
    "movie_reviews": {"config": "configs/sd_movie_reviews.yaml",
                      "override": {"data": {"name": "movie_reviews", "max_length": 64, "train_subset": 2000,
                                            "validation": 1000},
                                   "student": {"name": "mlp", "args": {"in_features": 384, "hidden": [512, 512]}},
                                   "train": {"epochs": 50, "batch_size": 64, "lr": 0.0001, "optimizer": "adamw",
                                             "weight_decay": 0.0001}}},
}

REGIMES = {
    "short": {"budget": BUDGET, "stem": "self_distill", "name": "bench_sd_{}",
              "note": "subsets and few epochs to fit a shared 2-core CPU machine; not the paper's scale"},
    "overfit": {"budget": OVERFIT, "stem": "self_distill_overfit", "name": "bench_sd_overfit_{}",
                "note": "few training rows and many epochs so that CE overfits (its validation NLL rises after its "
                        "minimum); every model is its best validation-accuracy epoch; not the paper's scale"},
}


def config_for(dataset: str, generations: int, seeds: list[int], out: Path, regime: str = "short",
               epochs: int | None = None, variants: list[str] | None = None):
    """The validated run config of one dataset: its config file with the budget cuts (and any overrides)."""
    from raykd.config import parse_config

    spec = REGIMES[regime]["budget"][dataset]
    raw = yaml.safe_load((ROOT / spec["config"]).read_text())
    raw.update(spec["override"])
    if epochs is not None:
        raw["train"] = {**raw["train"], "epochs": epochs}
    if variants is not None:
        raw["self_distill"]["variants"] = variants
    raw["self_distill"].update({"seeds": seeds})
    if "self_distill" in raw["self_distill"]["variants"]:
        raw["self_distill"].update({"generations": generations})
    raw.update({"name": REGIMES[regime]["name"].format(dataset), "output_dir": str(out), "ray": {"num_cpus": 2}})
    return parse_config(raw, spec["config"])


def seed_differences(metrics: pd.DataFrame, a: str, b: str, col: str) -> pd.Series:
    """Per-seed difference a - b of one metric (paired: same seed, same data), by seed."""
    x = metrics[metrics["method"] == a].set_index("seed")[col]
    y = metrics[metrics["method"] == b].set_index("seed")[col]
    return (x - y).dropna()


def paired(metrics: pd.DataFrame, a: str, b: str, col: str) -> dict:
    """Per-seed difference a - b of one metric: mean, std, and how many seeds it was > 0."""
    d = seed_differences(metrics, a, b, col)
    return {"mean": float(d.mean()), "std": float(d.std(ddof=0)), "positive": int((d > 0).sum()), "seeds": int(len(d))}


def verdicts(metrics: pd.DataFrame, generations: int) -> dict:
    out: dict = {"self_distill_vs_g0": {}, "beta_vs_label_smoothing": {}}
    for g in range(1, generations + 1):
        m = f"self_distill/g{g}"
        out["self_distill_vs_g0"][m] = {c: paired(metrics, m, "ce", c) for c in ("accuracy", "nll", "ece")}
    out["beta_vs_label_smoothing"] = {c: paired(metrics, "beta_smoothing", "label_smoothing", c)
                                      for c in ("accuracy", "nll", "ece")}
    return out


# ---- the overfitting regime's verdicts: one per claim, comparison and metric ----------------------------------

BETTER = {"accuracy": 1, "nll": -1, "ece": -1}  # the sign of a difference a - b that means a is better
RULE = ("For each comparison a vs b and metric, d_s = metric(a) - metric(b) on seed s (paired: same seed, same "
        "data), signed so that d > 0 means a is better (accuracy higher; NLL, ECE lower). 'holds': mean(d) > "
        "std(d) (population std over seeds) and d_s > 0 on every seed; 'does not hold': mean(d) < -std(d) (a is "
        "worse by more than the spread); 'undecided': anything else, and always with fewer than 3 seeds. "
        "'Matches or beats' (Beta smoothing vs label smoothing) holds unless the verdict on 'beats' is "
        "'does not hold'.")
MIN_SEEDS = 3


def judged(metrics: pd.DataFrame, a: str, b: str, col: str) -> dict:
    """Paired per-seed difference a - b of one metric, with the verdict of the claim 'a is better than b'."""
    from raykd.metrics import paired_verdict

    return paired_verdict(seed_differences(metrics, a, b, col), BETTER[col], MIN_SEEDS)


def overfit_claims(metrics: pd.DataFrame, generations: int) -> dict:
    """The paper's claims checked with :func:`judged`, each also stated in one sentence."""
    cols = ("accuracy", "nll", "ece")
    comparisons = {
        "self_distill_vs_g0": {f"self_distill/g{g}": ("self_distill/g%d" % g, "ce") for g in range(1, generations + 1)},
        "beta_vs_label_smoothing": {"beta_smoothing": ("beta_smoothing", "label_smoothing")},
        "smoothing_vs_ce": {m: (m, "ce") for m in ("label_smoothing", "beta_smoothing")},
    }
    claim_text = {"self_distill_vs_g0": "{a} is better than generation 0 (CE) in {c}",
                  "beta_vs_label_smoothing": "Beta smoothing beats label smoothing in {c}",
                  "smoothing_vs_ce": "{a} is better than CE in {c}"}
    out: dict = {"rule": RULE, "statements": []}
    for claim, pairs in comparisons.items():
        out[claim] = {}
        for key, (a, b) in pairs.items():
            out[claim][key] = {c: judged(metrics, a, b, c) for c in cols}
            for c in cols:
                j = out[claim][key][c]
                if j["seeds"] == 0:
                    line = f"{claim_text[claim].format(a=a, c=c)}: undecided (not run)"
                else:
                    line = (f"{claim_text[claim].format(a=a, c=c)}: {j['verdict']} (difference {j['mean']:+.4f} +/- "
                            f"{j['std']:.4f}, better on {j['better_on']}/{j['seeds']} seeds)")
                if claim == "beta_vs_label_smoothing":
                    j["verdict_matches_or_beats"] = "undecided" if j["seeds"] < MIN_SEEDS else \
                        ("does not hold" if j["verdict"] == "does not hold" else "holds")
                    line += f"; matches or beats: {j['verdict_matches_or_beats']}"
                out["statements"].append(line)
    return out


def val_curves(cfg, out: Path) -> dict:
    """Validation NLL and accuracy by epoch, per method (mean over seeds), from the run's results rows; for CE
    where its validation NLL is lowest and how far it rose after that (the evidence that CE overfits)."""
    from raykd.lifecycle import run_id_of
    from raykd.results import read_results

    rows = read_results(out)
    rows = rows[rows["run_id"] == run_id_of(cfg)].sort_values("seed")
    curves: dict = {}
    for method, group in rows.groupby("method", sort=False):
        extras = [json.loads(e) for e in group["extra"]]
        nll = [e["val_nll_by_epoch"] for e in extras if e.get("val_nll_by_epoch")]
        acc = [e["val_accuracy_by_epoch"] for e in extras if e.get("val_accuracy_by_epoch")]
        curves[method] = {"seeds": len(nll),
                          "val_nll_by_epoch": np.mean(nll, axis=0).round(4).tolist() if nll else None,
                          "val_accuracy_by_epoch": np.mean(acc, axis=0).round(4).tolist() if acc else None,
                          "selected_epochs": sorted(int(e["selected_epoch"]) for e in extras if e.get("selected_epoch"))}
    ce: dict = {"note": "no CE rows with a validation NLL curve"}
    if curves.get("ce", {}).get("val_nll_by_epoch"):
        c = np.asarray(curves["ce"]["val_nll_by_epoch"])
        extras = [json.loads(e) for e in rows.loc[rows["method"] == "ce", "extra"]]
        i = int(np.argmin(c))
        ce = {"val_nll_by_epoch_mean": c.tolist(), "epochs": len(c), "min_epoch": i + 1, "min_value": float(c[i]),
              "last_value": float(c[-1]), "rise_after_min": round(float(c[-1] - c[i]), 4),
              "rise_relative": round(float(c[-1] / c[i] - 1), 4), "rose_after_min": bool(i + 1 < len(c) and c[-1] > c[i]),
              "rose_rule": "the mean curve's last epoch is above its minimum, and the minimum is not the last epoch",
              "min_epoch_per_seed": {int(e["seed_entry"]): int(np.argmin(e["val_nll_by_epoch"])) + 1 for e in extras},
              "selected_epoch_per_seed": {int(e["seed_entry"]): int(e["selected_epoch"]) for e in extras},
              "selected_epoch_note": "each model is its epoch of best validation accuracy (the authors' protocol)"}
    return {"ce_overfits": ce, "by_method": curves}


COLS = ["dataset", "method", "seeds", "accuracy_mean", "accuracy_std", "nll_mean", "nll_std", "ece_mean", "ece_std",
        "train_mean_entropy_mean", "teacher_mean_entropy_mean"]
# the overfitting regime's table: diversity with its spread too (the model's own predictive entropy on test and
# on its training rows, and that of its teacher -- for self_distill/g<k>, generation k-1)
OVERFIT_COLS = COLS[:9] + ["mean_entropy_mean", "mean_entropy_std", "train_mean_entropy_mean", "train_mean_entropy_std",
                           "teacher_mean_entropy_mean", "teacher_mean_entropy_std"]


def write_report(report: dict, out_root: Path, regime: str = "short") -> None:
    """Print the table and the claim checks so far; write the full and the small JSON."""
    stem, cols = REGIMES[regime]["stem"], (COLS if regime == "short" else OVERFIT_COLS)
    table = pd.concat([pd.DataFrame(r["summary"]).assign(dataset=n) for n, r in report["datasets"].items()], ignore_index=True)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(table[cols].round(4).to_string(index=False))
    for name, r in report["datasets"].items():
        print(f"\n{name}:")
        if regime == "overfit":
            ce = r["val_curves"]["ce_overfits"]
            if "min_epoch" in ce:
                print(f"  CE validation NLL by epoch (mean over seeds): {' '.join(f'{v:.3f}' for v in ce['val_nll_by_epoch_mean'])}")
                print(f"  minimum {ce['min_value']:.4f} at epoch {ce['min_epoch']}, last {ce['last_value']:.4f}: "
                      f"{'rose' if ce['rose_after_min'] else 'did not rise'} after its minimum "
                      f"({ce['rise_relative']:+.1%})")
            for line in r["claims"]["statements"]:
                print(f"  {line}")
            continue
        for m, c in r["claims"]["self_distill_vs_g0"].items():
            a = c["accuracy"]
            print(f"  {m} - g0 accuracy: {a['mean']:+.4f} +/- {a['std']:.4f} (better on {a['positive']}/{a['seeds']} seeds); "
                  f"ECE {c['ece']['mean']:+.4f}; NLL {c['nll']['mean']:+.4f}")
        b = r["claims"]["beta_vs_label_smoothing"]
        print(f"  beta - label smoothing: accuracy {b['accuracy']['mean']:+.4f} +/- {b['accuracy']['std']:.4f} "
              f"(better on {b['accuracy']['positive']}/{b['accuracy']['seeds']}); ECE {b['ece']['mean']:+.4f}; NLL {b['nll']['mean']:+.4f}")
    out = out_root / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float))
    small = {"paper": report["paper"], "machine": report["machine"],
             "datasets": {n: {"budget": r["budget"], "wall_time_s": round(r["wall_time_s"]),
                              "summary": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                                           if k in cols} for row in r["summary"]],
                              **({"ce_overfits": r["val_curves"]["ce_overfits"],
                                  "val_nll_by_epoch": {m: c["val_nll_by_epoch"] for m, c in r["val_curves"]["by_method"].items()}}
                                 if regime == "overfit" else {}),
                              "claims": r["claims"]} for n, r in report["datasets"].items()}}
    if regime == "overfit":
        small["claim_rule"] = RULE
    (ROOT / "benchmarks" / f"{stem}_summary.json").write_text(json.dumps(small, indent=1, default=float))
    print(f"\nwrote {out} and benchmarks/{stem}_summary.json", flush=True)


def dataset_report(cfg, out: Path, wall: float, regime: str = "short") -> dict:
    metrics = pd.read_csv(out / "self_distill_metrics.csv")
    summary = pd.read_csv(out / "self_distill_summary.csv")
    s = cfg.self_distill
    report = {
        "budget": {"data": cfg.data.model_dump(exclude_none=True), "student": cfg.student.model_dump(),
                   "train": cfg.train.model_dump(), "generations": s.generations, "seeds": s.seeds,
                   "text_features": s.text_features if cfg.data.name == "movie_reviews" else None,
                   "note": REGIMES[regime]["note"]},
        "wall_time_s": wall,
        "summary": summary.replace({np.nan: None}).to_dict(orient="records"),
        "per_seed": metrics.replace({np.nan: None}).to_dict(orient="records"),
        "claims": verdicts(metrics, s.generations),
    }
    if regime == "overfit":
        report["budget"]["variants"] = list(s.variants)
        report["val_curves"] = val_curves(cfg, out)
        report["claims"] = overfit_claims(metrics, s.generations if "self_distill" in s.variants else 0)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regime", choices=list(REGIMES), default="short",
                   help="short: the small budget (default); overfit: few rows, many epochs, so that CE overfits")
    p.add_argument("--datasets", nargs="+", default=list(BUDGET), choices=list(BUDGET))
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="override the regime's epochs (a pilot or smoke test)")
    p.add_argument("--variants", nargs="+", default=None, help="override the variants (default: all five)")
    p.add_argument("--out", default=None, help="run directories (default: benchmarks/out/self_distill[_overfit]); the "
                   "full JSON goes next to it")
    p.add_argument("--fresh", action="store_true", help="retrain every model (default: resume an earlier attempt)")
    p.add_argument("--check", action="store_true", help="validate the budgeted configs and exit")
    args = p.parse_args()
    regime = REGIMES[args.regime]
    out_dir = Path(args.out or ROOT / "benchmarks" / "out" / regime["stem"])
    configs = {name: config_for(name, args.generations, args.seeds, out_dir / name, args.regime, args.epochs, args.variants)
               for name in args.datasets}
    if args.check:
        for name, cfg in configs.items():
            print(f"{name}: {cfg.data.name}, {cfg.student.display}, {cfg.train.epochs} epochs, "
                  f"{len(cfg.self_distill.seeds)} seeds, {cfg.self_distill.generations} generations: ok")
        return

    import ray

    import raykd

    report: dict = {"paper": "Zhang & Sabuncu, Self-Distillation as Instance-Specific Label Smoothing (NeurIPS 2020)",
                    "machine": f"{os.cpu_count()} CPU cores, shared with other jobs; no GPU", "datasets": {}}
    if args.regime == "overfit":
        report["regime"] = "overfit"
    previous = out_dir.parent / f"{regime['stem']}.json"
    if previous.exists():  # keep the results of datasets this invocation does not rerun
        kept = {n: r for n, r in json.loads(previous.read_text())["datasets"].items() if n not in args.datasets}
        report["datasets"].update(kept)
        if kept:
            print(f"keeping earlier results for {sorted(kept)} from {previous}", flush=True)
    try:
        for name, cfg in configs.items():
            t0 = time.time()
            raykd.run(cfg, fresh=args.fresh)  # a rerun of an interrupted benchmark resumes it
            report["datasets"][name] = dataset_report(cfg, Path(cfg.output_dir), time.time() - t0, args.regime)
            write_report(report, out_dir.parent, args.regime)  # after every dataset, so a cut-short run keeps its results
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
