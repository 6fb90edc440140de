"""One results schema for every run: rows appended to ``results.parquet`` + ``results.csv``.

Columns (DESIGN.md): run_id and item (together the row's key: a rerun replaces, never duplicates), method, dataset, eval_split (which rows the accuracy was measured on), teacher, student, params, bytes, macs, accuracy,
teacher_accuracy, ds (distillation metric), wall_time_s, seed, config_hash, plus the teacher's size
figures (so DS can be re-computed for any ``a`` and size measure without rerunning) and ``extra``,
a JSON string with method-specific numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from raykd.metrics import distillation_score

COLUMNS = [
    "run_id", "item", "time", "method", "dataset", "eval_split", "teacher", "student",
    "params", "bytes", "macs", "accuracy",
    "teacher_params", "teacher_bytes", "teacher_macs", "teacher_accuracy",
    "ds", "ds_a", "ds_size", "wall_time_s", "seed", "config_hash", "extra",
]
NUMERIC = ["params", "bytes", "macs", "accuracy", "teacher_params", "teacher_bytes", "teacher_macs",
           "teacher_accuracy", "ds", "ds_a", "wall_time_s", "seed"]


def config_hash(cfg: Any) -> str:
    """Stable short hash of a (JSON-able) config."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def make_row(*, method: str, dataset: str, student: str, params: float, accuracy: float,
             teacher: str = "", teacher_params: float | None = None, teacher_accuracy: float | None = None,
             bytes: float | None = None, macs: float | None = None, teacher_bytes: float | None = None,
             teacher_macs: float | None = None, a: float = 0.5, size: str = "params",
             wall_time_s: float | None = None, seed: int | None = None, cfg_hash: str = "",
             run_id: str = "", item: str = "", eval_split: str = "", extra: dict | None = None) -> dict:
    """Build one results row and compute its DS (NaN when there is no teacher to compare with)."""
    sizes = {"params": (params, teacher_params), "bytes": (bytes, teacher_bytes), "macs": (macs, teacher_macs)}
    s, t = sizes[size]
    ds = float("nan")
    if teacher_accuracy and t and s:
        ds = distillation_score(float(s), float(t), float(accuracy), float(teacher_accuracy), a)
    return {
        "run_id": run_id, "item": item, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "method": method, "dataset": dataset,
        "eval_split": eval_split,
        "teacher": teacher, "student": student, "params": params, "bytes": bytes, "macs": macs,
        "accuracy": accuracy, "teacher_params": teacher_params, "teacher_bytes": teacher_bytes,
        "teacher_macs": teacher_macs, "teacher_accuracy": teacher_accuracy, "ds": ds, "ds_a": a,
        "ds_size": size, "wall_time_s": wall_time_s, "seed": seed, "config_hash": cfg_hash,
        "extra": json.dumps(extra or {}, sort_keys=True, default=float),
    }


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in set(COLUMNS) - set(NUMERIC):
        df[c] = df[c].astype("string")
    return df[COLUMNS]


def append_rows(out_dir: str | Path, rows: list[dict]) -> pd.DataFrame:
    """Add rows to ``out_dir/results.parquet`` and ``results.csv`` (atomically, under a file lock).

    Rows are keyed by ``(run_id, item)``: a row whose key is already in the table replaces the old one,
    so a resumed or retried run leaves exactly one row per item."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq = out_dir / "results.parquet"
    with FileLock(str(out_dir / ".results.lock")):
        new = _normalise(pd.DataFrame(rows))
        old = read_results(out_dir) if pq.exists() else None
        if old is not None and not old.empty:  # rows without an item (made by hand) are never replaced
            keys = {k for k in zip(new["run_id"], new["item"]) if isinstance(k[1], str) and k[1]}
            old = old[[k not in keys for k in zip(old["run_id"], old["item"])]]
        df = new if old is None or old.empty else pd.concat([old, new], ignore_index=True)
        for target, writer in ((pq, lambda p: df.to_parquet(p, index=False)), (out_dir / "results.csv", lambda p: df.to_csv(p, index=False))):
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            writer(tmp)
            os.replace(tmp, target)
    return df


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a results table from a run directory, a parquet file or a CSV file."""
    p = Path(path)
    if p.is_dir():
        if (p / "results.parquet").exists():
            p = p / "results.parquet"
        elif (p / "results.csv").exists():
            p = p / "results.csv"
        else:
            from raykd.errors import UserError
            raise UserError(f"{path}: no results.parquet or results.csv here; pass a run directory that a raykd run wrote")
    df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    return _normalise(df)
