"""Checkpoints: written so a crash leaves a whole one or none, refused with one sentence naming the
file when damaged, and resume falls back to the newest intact one."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from raykd.engine.checkpoint import DamagedCheckpoint, load_state, load_weights, read_state, save_state, save_weights
from raykd.errors import UserError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _checkpoint(d: Path) -> Path:
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    return save_state(d, net, opt, {"epoch": 3, "step": 30})


def test_a_checkpoint_round_trips_and_lists_its_files(tmp_path):
    d = _checkpoint(tmp_path / "ck")
    raw = json.loads((d / "state.json").read_text())
    assert set(raw["_files"]) == {"model.safetensors", "optimizer.pt"}
    net = _net()
    with torch.no_grad():
        net[0].weight.zero_()
    opt = torch.optim.Adam(net.parameters())
    state = load_state(d, net, opt)
    assert state == {"epoch": 3, "step": 30}
    assert net[0].weight.abs().sum() > 0 and opt.state_dict()["state"]
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def _truncate(p: Path, n: int = 10) -> None:
    with open(p, "r+b") as f:
        f.truncate(n)


DAMAGE = {
    "truncated weights": ("model.safetensors", lambda p: _truncate(p)),
    "empty weights": ("model.safetensors", lambda p: p.write_bytes(b"")),
    "a pickle as weights": ("model.safetensors", lambda p: p.write_bytes(pickle.dumps({"w": [1.0] * 50}))),
    "truncated optimizer": ("optimizer.pt", lambda p: _truncate(p, 100)),
    "empty optimizer": ("optimizer.pt", lambda p: p.write_bytes(b"")),
    "broken state.json": ("state.json", lambda p: p.write_text('{"epoch": 3, "st')),
    "state.json not an object": ("state.json", lambda p: p.write_text("[1, 2]")),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_one_sentence_naming_the_file(tmp_path, case):
    name, damage = DAMAGE[case]
    d = _checkpoint(tmp_path / "ck")
    damage(d / name)
    with pytest.raises(DamagedCheckpoint) as e:
        load_state(d, _net(), torch.optim.Adam(_net().parameters()))
    msg = str(e.value)
    assert msg.startswith(str(d / name)) and "\n" not in msg
    assert "damaged or truncated" in msg


def test_same_size_garbage_in_weights_is_caught_by_the_reader(tmp_path):
    """A file overwritten in place keeps its size; the safetensors reader still refuses it."""
    d = _checkpoint(tmp_path / "ck")
    size = (d / "model.safetensors").stat().st_size
    (d / "model.safetensors").write_bytes(b"\x07" * size)
    read_state(d)  # sizes match, so only reading the weights can tell
    with pytest.raises(DamagedCheckpoint, match="model.safetensors: these safetensors weights cannot be read"):
        load_state(d, _net())


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_weights(_net(), tmp_path / "w.safetensors")
    with pytest.raises(UserError, match="do not fit the configured architecture"):
        load_weights(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5)), tmp_path / "w.safetensors")
    with pytest.raises(UserError, match="tensors missing"):
        load_weights(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3)), tmp_path / "w.safetensors")


def test_a_damaged_teacher_checkpoint_is_refused_by_raykd_check(tmp_path, capsys):
    from raykd.cli import main

    bad = tmp_path / "teacher.safetensors"
    bad.write_bytes(pickle.dumps({"not": "weights"}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"method": "kd", "data": {"name": "mnist", "train_subset": 100, "test_subset": 50},
                               "teacher": {"name": "cnn", "args": {"widths": [4, 8], "hidden": 16}, "checkpoint": str(bad)},
                               "students": [{"name": "cnn", "args": {"widths": [2, 4], "hidden": 8}}]}))
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "cannot be read" in err and len(err.strip().splitlines()) == 1


@pytest.mark.ray
def test_resume_falls_back_to_the_newest_intact_checkpoint(ray_session, tmp_path, capfd):
    from raykd.engine.task import TaskSpec
    from raykd.engine.trainer import fit

    task = TaskSpec(dataset={"name": "mnist", "train_subset": 1000, "test_subset": 500},
                    student={"name": "cnn", "args": {"widths": [4, 8], "hidden": 16}},
                    losses=[{"name": "ce"}], train={"epochs": 2, "batch_size": 32, "lr": 1e-2, "seed": 0})
    engine = {"num_workers": 1, "cpus_per_worker": 1.0}
    first = fit(task, engine, "resume-fallback", tmp_path / "ray", label="first")
    assert first.metrics["epoch"] == 2 and first.metrics["resumed_after_epoch"] == 0
    run_dir = Path(first.checkpoint.path).parent
    checkpoints = sorted(p for p in run_dir.iterdir() if p.name.startswith("checkpoint_") and p.is_dir())
    assert len(checkpoints) == 2  # after epoch 1 and after epoch 2
    _truncate(checkpoints[-1] / "model.safetensors")
    # the same run again: Ray hands it the latest checkpoint (damaged); it resumes from epoch 1's instead
    second = fit(task, engine, "resume-fallback", tmp_path / "ray", label="second")
    assert second.error is None
    assert second.metrics["epoch"] == 2 and second.metrics["resumed_after_epoch"] == 1
    assert second.metrics["accuracy"] > 0.3  # chance is 0.1
    assert "skipping a damaged checkpoint" in capfd.readouterr().out
