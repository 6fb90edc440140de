"""One run lifecycle for every method: Ray started or joined in one place, one output layout, and a
rerun of the same command that resumes.

:func:`execute` validates nothing itself (the config is validated already) and runs:

1. Ray: joined (``ray.address`` / ``RAY_ADDRESS``) or started locally (:mod:`raykd.runtime`), with
   the run's plugins and cache location handed to every worker.
2. The method's ``run(cfg, ctx)`` with a :class:`RunContext`. The run id is the config's name and
   hash, so the same command gets the same id: rows are keyed by ``(run_id, item)`` and an item that
   already has its row is skipped (:meth:`RunContext.done`); Ray Train and RLlib runs are named after
   their item and resume from their checkpoints.
3. The report: the run's rows, ``leaderboard.csv`` and the plots.

Output layout of ``output_dir``::

    config.yaml              the validated config (with its run id)
    results.parquet/.csv     every row of every run written here (keyed by run_id and item)
    leaderboard.csv, accuracy_vs_size.png, ds_vs_a.png
    data.json                the evaluation split, class names and normalisation (methods with data)
    students/                trained students (save_pretrained or safetensors + labels.json)
    checkpoints/             RLlib checkpoints (dpd)
    ray/                     Ray storage: Train runs, Tune experiments (engine.storage_path moves it)
    tensorboard/             TensorBoard event files of every Ray Train run (``tensorboard --logdir``)
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from raykd.config import RunConfig
from raykd.method import get_method
from raykd.results import append_rows, config_hash, read_results


def run_id_of(cfg: RunConfig) -> str:
    """The config's name and the hash of what it asks for (where it writes and which cluster runs it
    do not count), so the same command always has the same run id."""
    dump = cfg.model_dump(mode="json", exclude={"output_dir", "ray"})
    return f"{cfg.name}-{config_hash(dump)}"


@dataclass
class RunContext:
    """What a method's run is given besides its config."""

    cfg: RunConfig
    out_dir: Path
    run_id: str
    storage: Path                      # Ray storage (Train runs, Tune experiments)
    callbacks: list = field(default_factory=list)  # extra Ray Train callbacks (a sweep trial's Tune reporter)
    trial: str | None = None           # the Tune trial this run is, in a sweep
    reported: bool = False             # whether a Train run reported through ``callbacks``
    trial_in_process: bool = False     # a sweep trial that trains in its own process (no worker group)

    # ---- results, keyed by item -----------------------------------------------------------------
    def done(self, item: str) -> dict | None:
        """This run's row for ``item`` if an earlier attempt wrote it (the item is then skipped)."""
        path = self.out_dir / "results.parquet"
        if not path.exists():
            return None
        df = read_results(self.out_dir)
        hit = df[(df["run_id"] == self.run_id) & (df["item"] == item)]
        return None if hit.empty else hit.iloc[-1].to_dict()

    def record(self, rows: list[dict]) -> None:
        """Write rows (each with its ``item``) under this run's id; a row for the same item is replaced."""
        for r in rows:
            if not r.get("item"):
                raise ValueError(f"a results row needs an item: {r.get('method')} {r.get('student')}")
            r["run_id"] = self.run_id
        append_rows(self.out_dir, rows)

    def rows(self, include_trials: bool = False) -> pd.DataFrame:
        """Every row this run has written so far (earlier attempts included); with ``include_trials``
        also the rows of its sweep trials (run ids ``<run_id>/<trial>``)."""
        path = self.out_dir / "results.parquet"
        if not path.exists():
            return pd.DataFrame()
        df = read_results(self.out_dir)
        mine = df["run_id"] == self.run_id
        if include_trials:
            mine |= df["run_id"].str.startswith(f"{self.run_id}/").fillna(False)
        return df[mine].reset_index(drop=True)

    # ---- names and places ----------------------------------------------------------------------
    def ray_name(self, item: str) -> str:
        """The name of the Ray Train/Tune run of ``item``: the same on every attempt, so it resumes."""
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{self.run_id}-{item}")

    @property
    def students_dir(self) -> Path:
        return self.out_dir / "students" / (self.trial or "")

    @property
    def tensorboard_dir(self) -> Path:
        return self.out_dir / "tensorboard"

    def train_callbacks(self, item: str | list[str]) -> list:
        """Ray Train callbacks of the run that trains ``item`` (or several items in turn): each item's epochs
        in TensorBoard under its own name, plus those of the caller (a sweep trial's Tune reporter)."""
        from raykd.engine.tensorboard import TensorBoardCallback

        self.reported = self.reported or bool(self.callbacks) or self.trial_in_process
        items = [item] if isinstance(item, str) else list(item)
        return [TensorBoardCallback({i: self.tensorboard_dir / self.ray_name(i) for i in items}), *self.callbacks]


@dataclass
class RunResult:
    """What :func:`raykd.run` returns."""

    table: pd.DataFrame          # this run's results rows
    output_dir: Path
    students: list[Path]         # saved students (directories)
    run_id: str


def make_context(cfg: RunConfig, fresh: bool = False) -> RunContext:
    out = Path(cfg.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    engine = getattr(cfg, "engine", None)
    storage = Path(engine.storage_path if engine is not None and engine.storage_path else out / "ray").expanduser().resolve()
    ctx = RunContext(cfg, out, run_id_of(cfg), storage)
    if fresh:
        forget(ctx)
    (out / "config.yaml").write_text(yaml.safe_dump({"run_id": ctx.run_id, **cfg.model_dump(mode="json")}, sort_keys=False))
    return ctx


def forget(ctx: RunContext) -> None:
    """Start the run over: drop its rows (a sweep's trial rows, ``<run id>/<trial>``, too) and its Ray
    runs (``--fresh``)."""
    path = ctx.out_dir / "results.parquet"
    if path.exists():
        df = read_results(ctx.out_dir)
        ids = df["run_id"].astype(str)
        keep = df[(ids != ctx.run_id) & ~ids.str.startswith(f"{ctx.run_id}/")]
        for target, writer in ((path, lambda p: keep.to_parquet(p, index=False)),
                               (ctx.out_dir / "results.csv", lambda p: keep.to_csv(p, index=False))):
            writer(target)
    for d in list(ctx.storage.glob(f"{ctx.ray_name('')}*")) + list((ctx.out_dir / "checkpoints").glob(f"{ctx.run_id}*")):
        shutil.rmtree(d, ignore_errors=True)


def data_sections(model, where: str = "") -> list[tuple[str, Any]]:
    """Every ``data:`` section (a DataConfig) of a validated config, with its dotted location."""
    from pydantic import BaseModel

    from raykd.config import DataConfig

    if isinstance(model, DataConfig):
        return [(where, model)]
    found = []
    if isinstance(model, BaseModel):
        for name in type(model).model_fields:
            found += data_sections(getattr(model, name), f"{where}.{name}" if where else name)
    return found


def check_inputs(cfg: RunConfig) -> list[str]:
    """Open the data and teacher weights of a config on the driver, before any Ray work: a bad file
    fails here with one sentence (UserError). Returns one summary line per data section."""
    from raykd.data.prepare import prepare
    from raykd.engine.checkpoint import check_weights_file

    for section in (getattr(cfg, "teacher", None), getattr(cfg.settings, "teacher", None)):
        if getattr(section, "checkpoint", None):
            check_weights_file(section.checkpoint)
    lines = []
    for where, section in data_sections(cfg):
        p = prepare(section)
        names = ", ".join(p.labels.names[:10]) + (", ..." if p.num_classes > 10 else "")
        lines.append(f"{where}: {section.name}, {len(p.train['label']):,} training rows, {p.num_classes} classes ({names}); "
                     f"evaluated on {p.eval_split}: {len(p.test['label']):,} rows")
    return lines


def execute(cfg: RunConfig, fresh: bool = False, report: bool = True, shutdown: bool = False) -> RunResult:
    """Run ``cfg`` (already validated) from start to finish, or resume it; returns its results.
    ``shutdown``: stop the private Ray this process started once the run is done, while the report is
    written (the CLI; the Python API leaves Ray running for the caller)."""
    from raykd.plugins import loaded
    from raykd.runtime import init_ray, shutdown_in_background

    method = get_method(cfg.method)
    ctx = make_context(cfg, fresh)
    before = ctx.rows()
    if len(before):
        print(f"[raykd] run {ctx.run_id}: {len(before)} row(s) already in {ctx.out_dir}/results.csv; resuming "
              "(items with a row are skipped; --fresh starts over)", flush=True)
    started = init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus, dashboard=cfg.ray.dashboard, plugins=loaded())
    t0 = time.time()
    method.run(cfg, ctx)
    df = ctx.rows()
    print(f"[raykd] run {ctx.run_id}: {len(df)} row(s) in {time.time() - t0:.0f}s", flush=True)
    stopping = shutdown_in_background() if shutdown and started else None  # only the Ray this call started
    if report and len(df):
        from raykd.report import report as render

        render(ctx.out_dir, df=df, a=cfg.metric.a, size=cfg.metric.size)
    if stopping is not None:
        stopping.join()
    students = sorted(p for p in ctx.students_dir.rglob("*") if p.is_dir() and p.name != "teacher" and any(
        (p / f).exists() for f in ("model.safetensors", "config.json"))) if ctx.students_dir.exists() else []
    return RunResult(df, ctx.out_dir, students, ctx.run_id)


def config_summary(cfg: RunConfig) -> dict[str, Any]:
    """The validated config as plain data (for ``raykd check`` and the Python API)."""
    return json.loads(json.dumps(cfg.model_dump(mode="json"), default=str))
