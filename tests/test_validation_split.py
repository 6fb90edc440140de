"""``data.validation``: rows carved from the training split (stratified, seeded, never trained on); the
engine judges every epoch on them, keeps the best epoch's model (across a resume too) and reads the
test split once, at the end, for that model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from raykd.config import DataConfig, EngineConfig
from raykd.data.prepare import fingerprint, prepare
from raykd.engine.task import ClassifyTask, TaskSpec
from raykd.errors import UserError
from raykd.results import config_hash


def _rows(a: dict) -> set[bytes]:
    return {x.tobytes() for x in a["x"]}


def test_validation_is_carved_from_training_stratified_seeded_and_disjoint():
    cfg = DataConfig(name="mnist", train_subset=1000, test_subset=300, validation=400, split_seed=3)
    p = prepare(cfg)
    assert len(p.train["label"]) == 1000 and len(p.val["label"]) == 400 and len(p.test["label"]) == 300
    assert not _rows(p.train) & _rows(p.val)  # never trained on
    full = np.bincount(prepare(DataConfig(name="mnist")).train["label"], minlength=10)
    counts = np.bincount(p.val["label"], minlength=10)
    assert np.abs(counts - full / full.sum() * 400).max() <= 1  # stratified: the training split's class shares
    again = prepare(cfg.model_copy(update={"split_seed": 3}))
    assert _rows(again.val) == _rows(p.val)  # the same seed, the same rows
    other = prepare(cfg.model_copy(update={"split_seed": 4}))
    assert _rows(other.val) != _rows(p.val)
    assert p.describe()["n_val"] == 400


def test_without_validation_nothing_changes():
    cfg = DataConfig(name="mnist", train_subset=500, test_subset=200)
    p = prepare(cfg)
    assert p.val is None and "n_val" not in p.describe()
    assert "validation" not in cfg.model_dump() and "validation" not in fingerprint(cfg)  # keys and run ids as before
    assert config_hash(fingerprint(cfg)) != config_hash(fingerprint(cfg.model_copy(update={"validation": 10})))
    with pytest.raises(ValueError, match="no validation split"):
        ClassifyTask(TaskSpec(dataset=cfg, student={"name": "cnn"})).load_split("val")


def test_a_validation_that_leaves_no_training_rows_is_refused():
    with pytest.raises(UserError, match="data.validation 60000"):
        prepare(DataConfig(name="mnist", validation=60000))
    with pytest.raises(ValueError):
        DataConfig(name="mnist", validation=0)


def _task(epochs=3) -> TaskSpec:
    return TaskSpec(dataset={"name": "mnist", "train_subset": 600, "test_subset": 300, "validation": 200},
                    student={"name": "cnn", "args": {"widths": [4, 8], "hidden": 16}},
                    train={"epochs": epochs, "batch_size": 32, "lr": 0.02, "seed": 0})


class _Session:
    """The loop's session in this process (no Ray): keeps every checkpoint, and fails after ``crash_after``
    reports (a worker lost mid-run)."""

    rank, world = 0, 1

    def __init__(self, root: Path, resume_from: Path | None = None, crash_after: int | None = None):
        self.root, self.resume_from, self.crash_after = root, resume_from, crash_after
        self.reports: list[dict] = []
        self.checkpoints: list[Path] = []

    def device(self):
        return torch.device("cpu")

    def prepare_model(self, model):
        return model

    def get_checkpoint(self):
        from ray.train import Checkpoint

        return Checkpoint.from_directory(str(self.resume_from)) if self.resume_from else None

    def report(self, metrics, directory):
        self.reports.append(dict(metrics))
        if directory:
            kept = self.root / f"checkpoint_{len(self.reports):06d}"
            shutil.copytree(directory, kept)
            self.checkpoints.append(kept)
        if self.crash_after is not None and len(self.reports) >= self.crash_after:
            raise RuntimeError("worker lost")


def _run(session) -> dict:
    from raykd.engine.trainer import Job, run_jobs

    run_jobs({"jobs": [Job("model", _task(), "m")], "engine": EngineConfig(num_workers=1, cpus_per_worker=1)}, session)
    return session.reports[-1]


def test_the_best_validation_epoch_is_selected_and_survives_a_resume(tmp_path):
    whole = _Session(tmp_path / "a")
    (tmp_path / "a").mkdir()
    final = _run(whole)
    by_epoch = final["val_accuracy_by_epoch"]
    assert len(by_epoch) == 3
    assert final["selected_epoch"] == int(np.argmax(by_epoch)) + 1
    assert final["val_accuracy"] == max(by_epoch)
    # no per-epoch report carries a test figure: the test split is read once, at the end
    assert all("accuracy" not in r and "test_nll" not in r and "val_accuracy" in r for r in whole.reports[:-1])
    # the job's model (done/ and the checkpoint's own) is the selected one, and its test accuracy is the reported one
    last = whole.checkpoints[-1]
    done, top = load_file(last / "done" / "model" / "model.safetensors"), load_file(last / "model.safetensors")
    best = load_file(last / "best" / "model.safetensors")
    assert all(torch.equal(done[k], top[k]) and torch.equal(done[k], best[k]) for k in done)
    task = ClassifyTask(_task())
    model = task.build_student()
    model.load_state_dict(done)
    ev = task.evaluate(model, task.load_split("test"))
    assert ev["correct"] / ev["count"] == final["accuracy"]

    # a worker lost after epoch 2's checkpoint: the resumed job still selects among all 3 epochs
    (tmp_path / "b").mkdir()
    first = _Session(tmp_path / "b", crash_after=2)
    with pytest.raises(RuntimeError, match="worker lost"):
        _run(first)
    resumed = _Session(tmp_path / "c", resume_from=first.checkpoints[-1])
    (tmp_path / "c").mkdir()
    again = _run(resumed)
    assert again["resumed_after_epoch"] == 2
    assert again["val_accuracy_by_epoch"] == pytest.approx(by_epoch)
    assert again["selected_epoch"] == final["selected_epoch"] and again["accuracy"] == pytest.approx(final["accuracy"])


@pytest.mark.ray
def test_fit_with_validation_returns_the_selected_model(ray_session, tmp_path):
    """On Ray Train: the result's model is the best validation epoch's, and its test accuracy, measured
    again on the driver, is the reported ``accuracy``."""
    from raykd.distill.kd import load_trained
    from raykd.engine.trainer import fit

    task = _task()
    result = fit(task, {"num_workers": 1, "cpus_per_worker": 1}, "val-select", tmp_path / "ray")
    m = result.metrics
    assert m["selected_epoch"] == int(np.argmax(m["val_accuracy_by_epoch"])) + 1
    assert m["val_accuracy"] == max(m["val_accuracy_by_epoch"])
    t = ClassifyTask(task)
    ev = t.evaluate(load_trained(task, result), t.load_split("test"))
    assert ev["correct"] / ev["count"] == m["accuracy"]
    assert ev["nll_sum"] / ev["count"] == pytest.approx(m["test_nll"], rel=1e-5)


def test_self_distill_rows_record_how_each_model_was_selected():
    from raykd.config import parse_config
    from raykd.distill.self_distill import selection_of

    base = {"name": "sd", "method": "self_distill", "train": {"epochs": 3}}
    cfg = parse_config({**base, "data": {"name": "mnist", "train_subset": 100, "validation": 50}})
    trained = {"selected_epoch": 2, "val_accuracy": 0.9, "val_nll": 0.3, "val_accuracy_by_epoch": [0.8, 0.9, 0.85]}
    sel = selection_of(cfg, trained)
    assert sel["selected_epoch"] == 2 and sel["val_accuracy"] == 0.9 and "50 validation rows" in sel["eval_protocol"]
    plain = parse_config({**base, "data": {"name": "mnist", "train_subset": 100}})
    assert selection_of(plain, {}) == {"eval_protocol": "last epoch", "selected_epoch": 3}
