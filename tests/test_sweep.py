"""Ray Tune sweeps: 4 trials end to end on real data, the teacher-output cache, and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raykd.config import parse_config
from raykd.engine.task import TaskSpec
from raykd.errors import UserError
from raykd.results import read_results

REPO = Path(__file__).resolve().parents[1]
from test_engine_e2e import TEACHER  # noqa: E402


def _teacher(tmp_path) -> str:
    from test_engine_e2e import _train_teacher_plain

    return str(_train_teacher_plain(tmp_path / "teacher.safetensors", n=4000, epochs=1))


def _cfg(tmp_path, weights, **extra) -> dict:
    return {
        "name": "t_sweep", "method": "kd", "output_dir": str(tmp_path / "sweep"),
        "data": {"name": "mnist", "train_subset": 1000, "test_subset": 500},
        "teacher": {**TEACHER, "checkpoint": weights},
        "students": [{"name": "cnn", "args": {"widths": [4, 8], "hidden": 16}}],
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01},
        "engine": {"num_workers": 1, "teacher_cache": True},
        "sweep": {"space": {"student.args.widths": {"grid": [[2, 4], [4, 8]]},
                            "losses.0.temperature": {"grid": [2.0, 8.0]}}},
        **extra,
    }


@pytest.mark.ray
def test_sweep_of_4_trials_fills_the_table(ray_session, tmp_path, capfd):
    from raykd.sweep.tune import sweep

    weights = _teacher(tmp_path)
    cfg = parse_config(_cfg(tmp_path, weights))
    table = sweep(cfg)
    console = capfd.readouterr()
    # without --verbose: no Tune status tables, config boxes or Ray Data execution logs on the console
    for noise in ("Trial status:", "started with configuration", "Execution plan of Dataset", "AIR_VERBOSITY"):
        assert noise not in console.out + console.err, noise
    assert (table["method"] == "teacher").sum() == 1  # recorded once, not per trial
    df = table[table["method"] != "teacher"]
    assert len(df) == 4
    assert df["run_id"].is_unique and (df["item"] == "kd-0").all()
    for col in ("params", "bytes", "macs", "accuracy", "teacher_params", "teacher_accuracy", "ds", "wall_time_s", "config_hash"):
        assert df[col].notna().all(), col
    assert (df["accuracy"] > 0.3).all()  # every trial learned (chance is 0.1)
    assert sorted(df["params"].unique().tolist()) == sorted(set(df["params"]))  # two architectures
    assert df["params"].nunique() == 2
    out = tmp_path / "sweep"
    assert (out / "leaderboard.csv").exists() and (out / "accuracy_vs_size.png").exists() and (out / "ds_vs_a.png").exists()
    # with the cache, no trial ran the teacher itself
    import json

    fwd = [json.loads(e)["teacher_forward_examples"] for e in df["extra"]]
    assert all(f == 0 for f in fwd), fwd
    # one-worker trials trained in their own (reused) processes: no Ray Train run was started for them
    assert not [p for p in (out / "ray").iterdir() if p.name.endswith("-students")]
    assert {json.loads(e)["workers"] for e in df["extra"]} == {1}


def test_space_is_validated_before_any_trial(tmp_path):
    from raykd.sweep.tune import validate_space

    cfg = parse_config(_cfg(tmp_path, None)).model_dump()
    with pytest.raises(UserError, match="losses.0.temperature: Input should be greater than 0"):
        validate_space(cfg, {"losses.0.temperature": {"grid": [2.0, -1.0]}})
    with pytest.raises(UserError, match="expected one of"):
        validate_space(cfg, {"train.lr": {"logspace": [1, 2]}})
    with pytest.raises(UserError, match="trian"):
        validate_space(cfg, {"trian.lr": {"choice": [0.1]}})


def test_cache_key_changes_with_teacher_weights_and_dataset(tmp_path):
    import torch

    from raykd.engine.checkpoint import save_weights
    from raykd.engine.teacher_cache import cache_key
    from raykd.models import build

    torch.manual_seed(0)
    w1 = save_weights(build("cnn", **TEACHER["args"]), tmp_path / "a.safetensors")
    w2 = save_weights(build("cnn", **TEACHER["args"]), tmp_path / "b.safetensors")  # different init
    w3 = tmp_path / "c.safetensors"
    w3.write_bytes(w1.read_bytes())  # same bytes as w1, another file

    def key(weights, subset=1000, name="mnist"):
        return cache_key(TaskSpec(dataset={"name": name, "train_subset": subset}, student={"name": "cnn"},
                                  teacher={**TEACHER, "weights": str(weights)}, losses=[{"name": "kd"}]), False)

    assert key(w1) == key(w3)
    assert key(w1) != key(w2)
    assert key(w1) != key(w1, subset=2000)
    assert key(w1) != key(w1, name="fashion_mnist")


def test_rerank_cli_without_rerunning(tmp_path, capsys):
    from raykd.cli import main
    from raykd.results import append_rows, make_row

    rows = [make_row(method="kd", dataset="mnist", student=s, params=p, accuracy=a, teacher="T",
                     teacher_params=1000, teacher_accuracy=0.99, run_id="x") for s, p, a in
            [("tiny", 10, 0.90), ("big", 900, 0.99)]]
    append_rows(tmp_path, rows)
    assert main(["report", str(tmp_path), "--a", "0.9"]) == 0
    first = [l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("kd")][0]
    assert "tiny" in first
    assert main(["report", str(tmp_path), "--a", "0.0"]) == 0
    first = [l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("kd")][0]
    assert "big" in first


@pytest.mark.slow
def test_resume_after_killed_driver_has_no_duplicate_or_missing_trial(tmp_path):
    import yaml

    weights = _teacher(tmp_path)
    cfg = _cfg(tmp_path, weights)
    cfg["engine"]["teacher_cache"] = False
    # trials long enough (seconds each) that the driver can be killed between the first pair of trials
    # and the second: trials reuse their processes and start in no time
    cfg["train"]["epochs"] = 6
    cfg["data"]["train_subset"] = 3000
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1"}
    cmd = [sys.executable, "-m", "raykd.cli", "sweep", str(path), "--set", "ray.dashboard=false"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = tmp_path / "sweep"
    deadline = time.time() + 400
    def trials():
        df = read_results(out) if (out / "results.parquet").exists() else None
        return df[df["method"] != "teacher"] if df is not None else []

    while time.time() < deadline:  # kill the driver once the first trial has finished
        if len(trials()) >= 1:
            break
        time.sleep(0.25)
    else:
        proc.kill()
        pytest.fail("the sweep produced no trial result in time")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(trials())
    assert done_before < 4, "the driver was killed too late to test resume"
    rc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # the same command
    errors = [l for l in rc.stderr.splitlines() if "Error" in l or "error:" in l][-15:]
    assert rc.returncode == 0, "\n".join(errors) + "\n" + rc.stdout[-1500:]
    assert "resuming sweep" in rc.stdout
    df = trials()
    assert len(df) == 4 and df["run_id"].is_unique
    import json

    points = {(p, json.loads(e)["losses"][0]["temperature"]) for p, e in zip(df["params"], df["extra"])}
    assert len(points) == 4  # every grid point exactly once
