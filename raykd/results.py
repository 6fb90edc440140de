"""One results schema for every run: rows appended to ``results.parquet`` + ``results.csv``.

Columns (DESIGN.md): method, dataset, eval_split (which rows the accuracy was measured on), teacher, student, params, bytes, macs, accuracy,
teacher_accuracy, ds (distillation metric), wall_time_s, seed, config_hash, plus the teacher's size
figures (so DS can be re-computed for any ``a`` and size measure without rerunning) and ``extra``,
a JSON string with method-specific numbers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from raykd.sweep.metric import distillation_score

COLUMNS = [
    "run_id", "time", "method", "dataset", "eval_split", "teacher", "student",
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
             run_id: str = "", eval_split: str = "", extra: dict | None = None) -> dict:
    """Build one results row and compute its DS (NaN when there is no teacher to compare with)."""
    sizes = {"params": (params, teacher_params), "bytes": (bytes, teacher_bytes), "macs": (macs, teacher_macs)}
    s, t = sizes[size]
    ds = float("nan")
    if teacher_accuracy and t and s:
        ds = distillation_score(float(s), float(t), float(accuracy), float(teacher_accuracy), a)
    return {
        "run_id": run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "method": method, "dataset": dataset,
        "eval_split": eval_split,
        "teacher": teacher, "student": student, "params": params, "bytes": bytes, "macs": macs,
        "accuracy": accuracy, "teacher_params": teacher_params, "teacher_bytes": teacher_bytes,
        "teacher_macs": teacher_macs, "teacher_accuracy": teacher_accuracy, "ds": ds, "ds_a": a,
        "ds_size": size, "wall_time_s": wall_time_s, "seed": seed, "config_hash": cfg_hash,
        "extra": json.dumps(extra or {}, sort_keys=True, default=float),
    }


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(".results.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in set(COLUMNS) - set(NUMERIC):
        df[c] = df[c].astype("string")
    return df[COLUMNS]


def append_rows(out_dir: str | Path, rows: list[dict], replace_run_ids: bool = False) -> pd.DataFrame:
    """Append rows to ``out_dir/results.parquet`` and ``results.csv`` (atomically, under a file lock).

    With ``replace_run_ids`` existing rows with the same ``run_id`` as a new row are dropped first,
    so a retried or resumed trial leaves exactly one row."""
    out_dir = Path(out_dir)
    pq = out_dir / "results.parquet"
    with _locked(pq):
        new = _normalise(pd.DataFrame(rows))
        old = read_results(out_dir) if pq.exists() else None
        if old is not None and replace_run_ids:
            old = old[~old["run_id"].isin(set(new["run_id"]))]
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
