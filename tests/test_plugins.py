"""User code reaches every Ray worker: a loss defined in a user's own file (outside the package),
named by ``--plugin`` or ``plugins:``, trains a 2-worker distillation; bad plugins fail on the driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raykd.cli import main

REPO = Path(__file__).resolve().parents[1]

# A loss a user writes in their own project: KD on probabilities with an L1 distance. On import it
# records the process it was imported in, so the test can see that the Train workers imported it.
USER_LOSS = '''
import os
from pathlib import Path

import torch.nn.functional as F

import raykd

if os.environ.get("USER_PLUGIN_MARKER"):
    with open(Path(os.environ["USER_PLUGIN_MARKER"]) / f"{os.getpid()}", "w") as f:
        f.write("imported")


@raykd.register_loss("user_prob_l1")
def user_prob_l1(student_out, teacher_out, batch, temperature: float = 2.0):
    """L1 distance between the softened class distributions of student and teacher."""
    p_s = F.softmax(student_out["logits"] / temperature, dim=-1)
    p_t = F.softmax(teacher_out["logits"].float() / temperature, dim=-1)
    return (p_s - p_t).abs().sum(dim=-1).mean()
'''

CONFIG = """
name: plugin_kd
method: kd
data: {name: mnist, train_subset: 3000, test_subset: 1000}
teacher: {name: cnn, args: {widths: [8, 16], hidden: 64}, train: {epochs: 1, batch_size: 64, lr: 0.003}}
students: [{name: cnn, args: {widths: [4, 8], hidden: 32}}]
losses: [{name: user_prob_l1, temperature: 2.0}]
train: {epochs: 2, batch_size: 64, lr: 0.005}
engine: {num_workers: 2, teacher_placement: colocated}
ray: {num_cpus: 2, dashboard: false}
"""


@pytest.fixture
def user_project(tmp_path):
    project = tmp_path / "my_project"
    project.mkdir()
    (project / "my_losses.py").write_text(USER_LOSS)
    marker = tmp_path / "imported_in"
    marker.mkdir()
    return project, marker


def test_a_loss_from_a_user_file_trains_a_two_worker_distillation(user_project, tmp_path):
    project, marker = user_project
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG + f"output_dir: {tmp_path / 'out'}\n")
    env = {**os.environ, "USER_PLUGIN_MARKER": str(marker), "RAY_TRAIN_V2_ENABLED": "1"}
    r = subprocess.run([sys.executable, "-m", "raykd.cli", "run", str(cfg), "--plugin", str(project / "my_losses.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    student = df[df["method"] == "kd"].iloc[0]
    assert json.loads(student["extra"])["losses"][0]["name"] == "user_prob_l1"
    # the student learned from the user's loss alone (no CE): far above chance (0.1) on held-out digits
    assert student["accuracy"] > 0.5, student["accuracy"]
    pids = {int(p.name) for p in marker.iterdir()}
    # the driver and both Train workers (at least) imported the user's file
    assert len(pids) >= 3, f"imported in {len(pids)} processes"


def test_python_api_with_plugins_in_the_config(user_project, tmp_path, monkeypatch):
    """``plugins:`` in a config (relative to the config's folder), run through ``raykd.run``."""
    import yaml

    import raykd

    project, marker = user_project
    monkeypatch.setenv("USER_PLUGIN_MARKER", str(marker))
    raw = yaml.safe_load(CONFIG) | {"output_dir": str(tmp_path / "api"), "plugins": ["my_losses.py"],
                                    "students": [{"name": "cnn", "args": {"widths": [2, 4], "hidden": 16}}]}
    (project / "cfg.yaml").write_text(yaml.safe_dump(raw))
    cfg = raykd.load_config(project / "cfg.yaml", overrides=["train.epochs=1"])
    assert cfg.plugins == [str(project / "my_losses.py")]
    result = raykd.run(cfg)
    assert set(result.table["method"]) == {"teacher", "kd"}
    assert result.output_dir == (tmp_path / "api").resolve()
    assert [p.name for p in result.students] == ["kd-0"]
    assert (result.students[0] / "labels.json").exists()
    assert float(result.table.loc[result.table["method"] == "kd", "accuracy"].iloc[0]) > 0.3


@pytest.mark.parametrize("plugin, needle", [
    ("no_such_file.py", "no_such_file.py: no such file"),
    ("no_such_module_xyz", "importing it failed (ModuleNotFoundError"),
])
def test_bad_plugin_is_one_sentence(tmp_path, capsys, plugin, needle):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("method: kd\n")
    assert main(["check", str(cfg), "--plugin", plugin]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_a_plugin_that_raises_names_itself(tmp_path, capsys):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("method: kd\nplugins: [broken.py]\n")
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "plugins: broken.py: importing it failed (RuntimeError: boom)" in err


def test_unknown_loss_hints_at_plugins(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("method: kd\nlosses: [{name: zzz_user_loss}]\n")
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown loss 'zzz_user_loss'" in err and "under plugins: or pass --plugin" in err


def test_the_sixth_method_of_the_docs_runs_as_a_plugin_and_resumes(tmp_path):
    """docs/examples/born_again.py: a method in one file, registered from a plugin, run by the CLI;
    the same command again trains nothing and leaves one row per generation."""
    out = tmp_path / "ban"
    cmd = [sys.executable, "-m", "raykd.cli", "run", str(REPO / "docs" / "examples" / "born_again.yaml"),
           "--output-dir", str(out), "--set", "data.train_subset=3000", "--set", "data.test_subset=1000",
           "--set", "ray.dashboard=false", "--set", "ray.num_cpus=2"]
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["item"]) == ["generation-1", "generation-2"]
    assert (df["accuracy"] > 0.5).all(), df["accuracy"]  # chance: 0.1
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "2 row(s) already" in again.stdout, again.stdout[-2000:]
    assert "Started training worker group" not in again.stdout + again.stderr  # nothing trained again
    df2 = pd.read_csv(out / "results.csv")
    assert len(df2) == 2 and list(df2["accuracy"]) == list(df["accuracy"])
