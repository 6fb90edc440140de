"""Render a results table: printed leaderboard (sorted by DS), accuracy-vs-size plot with the Pareto
front, and DS as a function of ``a`` for the front's members. Reads nothing but the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from raykd.results import read_results
from raykd.metrics import SIZE_COLUMNS, distillation_score, leaderboard, pareto_front

TABLE_COLUMNS = ["method", "student", "params", "macs", "accuracy", "teacher_accuracy", "ds", "wall_time_s"]


def format_table(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    cols = [c for c in (columns or TABLE_COLUMNS) if c in df.columns]
    show = df[cols].copy()
    for c in show.columns:
        if c in ("params", "macs", "bytes"):
            show[c] = show[c].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
        elif c in ("accuracy", "teacher_accuracy", "ds"):
            show[c] = show[c].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
        elif c == "wall_time_s":
            show[c] = show[c].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    return show.to_string(index=False)


def to_markdown(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    cols = [c for c in (columns or TABLE_COLUMNS) if c in df.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df[cols].iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if pd.isna(v):
                cells.append("")
            elif c in ("params", "macs", "bytes"):
                cells.append(f"{int(v):,}")
            elif isinstance(v, float):
                cells.append(f"{v:.4f}" if c != "wall_time_s" else f"{v:.0f}")
            else:
                cells.append(str(v))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_accuracy_vs_size(df: pd.DataFrame, path: Path, size: str = "params", title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s_col = SIZE_COLUMNS[size][0]
    d = df.dropna(subset=[s_col, "accuracy"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, g in d.groupby("method", sort=True):
        ax.scatter(g[s_col], g["accuracy"], label=method, s=40, zorder=3,
                   marker="*" if method == "teacher" else "o")
        for _, r in g.iterrows():
            ax.annotate(str(r["student"])[:28], (r[s_col], r["accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = pareto_front(d, size)
    if len(front) > 1:
        ax.step(front[s_col], front["accuracy"], where="post", color="grey", ls="--", lw=1, label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel({"params": "parameters", "bytes": "bytes (fp32)", "macs": "MACs per example"}[size] + " (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "accuracy against size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ds_vs_a(df: pd.DataFrame, path: Path, size: str = "params") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s_col, t_col = SIZE_COLUMNS[size]
    d = df.dropna(subset=[s_col, t_col, "accuracy", "teacher_accuracy"])
    d = d[d["method"] != "teacher"]
    front = pareto_front(d, size)
    if front.empty:
        return None
    a = np.linspace(0, 1, 51)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, r in front.iterrows():
        ds = [distillation_score(r[s_col], r[t_col], r["accuracy"], r["teacher_accuracy"], x) for x in a]
        ax.plot(a, ds, label=f"{r['method']}: {str(r['student'])[:30]}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("a (weight of size)")
    ax.set_ylabel("distillation metric DS (lower is better)")
    ax.set_title("DS against a for the Pareto front")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(run_dir: str | Path, df: pd.DataFrame | None = None, a: float = 0.5, size: str = "params",
           quiet: bool = False) -> dict[str, Path]:
    """Print the leaderboard for ``a`` and write ``leaderboard.csv``, ``accuracy_vs_size.png`` and
    ``ds_vs_a.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    df = read_results(run_dir) if df is None else df
    board = leaderboard(df, a=a, size=size)
    board.to_csv(run_dir / "leaderboard.csv", index=False)
    paths = {"leaderboard": run_dir / "leaderboard.csv",
             "accuracy_vs_size": plot_accuracy_vs_size(df, run_dir / "accuracy_vs_size.png", size)}
    ds_plot = plot_ds_vs_a(df, run_dir / "ds_vs_a.png", size)
    if ds_plot:
        paths["ds_vs_a"] = ds_plot
    if not quiet:
        print(f"\nResults (DS with a={a}, size by {size}; lower is better):")
        print(format_table(board))
        for k, p in paths.items():
            print(f"  {k}: {p}")
    return paths
