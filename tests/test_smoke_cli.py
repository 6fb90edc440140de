"""CLI behaviour on bad input: one sentence, exit status 2, no traceback, before any Ray work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raykd.cli import main

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, needle", [
    ("method: kd\ntrian: {epochs: 1}\n", "trian: unknown field; did you mean 'train'"),
    ("method: kd\ntrain: {epochs: -1}\n", "train.epochs"),
    ("method: kd\nlosses: [{name: kd, temperature: -4}]\n", "losses.0.temperature: Input should be greater than 0"),
    ("method: kd\nmetric: {a: 1.5}\n", "metric.a"),
    ("method: kd\nlosses: [{name: kdd}]\n", "unknown loss 'kdd'; did you mean 'kd'"),
    ("method: kd\ndata: {name: mnsit}\n", "unknown dataset 'mnsit'; did you mean 'mnist'"),
    ("method: kd\nstudents: [{name: cnnn}]\n", "unknown model 'cnnn'; did you mean 'cnn'"),
    ("method: kd\nstudents: [{name: cnn, args: {widths: [256, 256], hidden: 512}}]\n", "more than the teacher"),
    ("method: kdd\n", "unknown method 'kdd'; did you mean 'kd'"),
    ("method: kd\nname: !!python/object/apply:os.system ['echo pwned']\n", "cannot execute code"),
    ("method: kd\ntrain: [unclosed\n", "not valid YAML"),
    ("method: kd\nengine: {placement_strategy: SPREADD}\n", "engine.placement_strategy"),
])
def test_bad_config_exits_2_with_one_sentence(tmp_path, capsys, text, needle):
    rc = main(["run", _write(tmp_path, text)])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_config_file(capsys):
    assert main(["run", "no/such/config.yaml"]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_bad_override(tmp_path, capsys):
    cfg = _write(tmp_path, "method: kd\n")
    assert main(["check", cfg, "--set", "train.epochs"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert main(["check", cfg, "--set", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_override_applies(tmp_path, capsys):
    cfg = _write(tmp_path, "method: kd\nlosses: [{name: kd, temperature: 4}]\n")
    assert main(["check", cfg, "--set", "train.epochs=3", "--set", "losses.0.temperature=2"]) == 0
    out = capsys.readouterr().out
    assert '"epochs": 3' in out and '"temperature": 2' in out


def test_every_example_config_validates():
    from raykd.config import load_config

    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs, "no example configs"
    for c in configs:
        if c.name == "own_hf.yaml":
            continue  # reads files earlier commands make: validated by the next test
        load_config(c)  # raises UserError on any problem


def test_own_hf_config_validates_once_its_files_exist(tmp_path, monkeypatch):
    """configs/own_hf.yaml reads a saved teacher directory and a BPE tokenizer that the README's commands
    make first; with stand-ins at those paths it validates as written, and without them the error
    names the missing directory."""
    from raykd.config import load_config
    from raykd.errors import UserError
    from raykd.models import build
    from raykd.models.bert import tokenizer

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no directory 'runs/lm_smoke/students/teacher'"):
        load_config(REPO / "configs" / "own_hf.yaml")
    teacher = build("bert", num_classes=2, num_layers=1, hidden_size=256, num_heads=4, intermediate_size=256)
    teacher.save_pretrained(tmp_path / "runs/lm_smoke/students/teacher")
    tokenizer().save_pretrained(tmp_path / "runs/lm_smoke/students/teacher")
    tokenizer().save_pretrained(tmp_path / "runs/bpe-movie_reviews")
    cfg = load_config(REPO / "configs" / "own_hf.yaml")
    assert cfg.teacher.args["path"] == str((tmp_path / "runs/lm_smoke/students/teacher").resolve())


def test_console_script_exit_status(tmp_path):
    """The installed entry point (not just main()) exits 2 on a user error."""
    cfg = _write(tmp_path, "method: kd\nmetric: {a: 2}\n")
    proc = subprocess.run([sys.executable, "-m", "raykd.cli", "check", cfg], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("raykd: error:")
