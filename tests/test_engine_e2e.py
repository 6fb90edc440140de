"""End to end on Ray Train with 2 workers, on real MNIST: a KD student against the same student
trained from scratch on the same budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raykd.config import parse_config
from raykd.engine.task import ClassifyTask, TaskSpec
from raykd.engine.checkpoint import save_weights
from raykd.results import read_results

TEACHER = {"name": "cnn", "args": {"widths": [16, 32], "hidden": 128}}
STUDENT = {"name": "cnn", "args": {"widths": [4, 8], "hidden": 16}}


def _train_teacher_plain(path, n=12000, epochs=2, seed=0):
    """A teacher trained in-process with plain PyTorch (no Ray), so the test pays for 2 Ray runs only."""
    torch.manual_seed(seed)
    method = ClassifyTask(TaskSpec(dataset={"name": "mnist", "train_subset": n}, student=TEACHER))
    arrays = method.load_split("train")
    net = method.build_student()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(arrays["label"]))
        for i in range(0, len(perm), 128):
            b = method.batch(arrays, np.sort(perm[i:i + 128]))
            loss = F.cross_entropy(net(b["x"]), b["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    save_weights(net, path)
    return path


@pytest.mark.ray
def test_kd_student_beats_scratch_on_ray_train_2_workers(ray_session, tmp_path):
    weights = _train_teacher_plain(tmp_path / "teacher.safetensors")
    cfg = parse_config({
        "name": "e2e", "method": "kd", "output_dir": str(tmp_path / "run"),
        "data": {"name": "mnist", "train_subset": 3000, "test_subset": 2000},
        "teacher": {**TEACHER, "checkpoint": str(weights)},
        "students": [STUDENT],
        "losses": [{"name": "kd", "weight": 0.9, "temperature": 4.0}, {"name": "ce", "weight": 0.1}],
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.01},  # per worker: global batch 32
        "engine": {"num_workers": 2},
        "kd": {"baseline_scratch": True},
    })
    from raykd.api import run

    df = run(cfg, check_data=False).table
    by = {r["method"]: r for r in df.to_dict("records")}
    assert set(by) == {"teacher", "kd", "scratch"}
    teacher, kd, scratch = by["teacher"], by["kd"], by["scratch"]
    print(json.dumps({k: (v["accuracy"], v["params"], v["ds"]) for k, v in by.items()}))
    assert teacher["accuracy"] > 0.95
    # the KD student clears 0.90, the scratch student is above chance (0.10) by a margin, and
    # distillation beats training from scratch on the same budget
    assert kd["accuracy"] > 0.90 and scratch["accuracy"] > 0.30
    assert kd["accuracy"] > scratch["accuracy"]
    # the row is complete and DS is consistent with its columns
    for col in ("params", "bytes", "macs", "accuracy", "teacher_accuracy", "ds", "wall_time_s", "config_hash"):
        assert kd[col] == kd[col] and kd[col] is not None, col
    assert kd["params"] < teacher["params"]
    expected = 0.5 * kd["params"] / teacher["params"] + 0.5 * (1 - kd["accuracy"] / teacher["accuracy"])
    assert kd["ds"] == pytest.approx(expected)
    # the table, leaderboard and plot are on disk; the student is saved and loads back
    out = tmp_path / "run"
    assert len(read_results(out)) == 3
    assert (out / "accuracy_vs_size.png").stat().st_size > 10_000
    assert (out / "students" / "kd-0" / "model.safetensors").exists()


@pytest.mark.ray
def test_actor_pool_teacher_placement_streams_teacher_outputs(ray_session, tmp_path):
    """Teacher inference in a Ray Data actor pool feeding the training worker's shard."""
    from raykd.engine.trainer import fit

    weights = tmp_path / "teacher.safetensors"
    _train_teacher_plain(weights, n=4000, epochs=1)
    task = TaskSpec(dataset={"name": "mnist", "train_subset": 2000, "test_subset": 1000}, student=STUDENT,
                    teacher={**TEACHER, "weights": str(weights)},
                    losses=[{"name": "kd", "weight": 1.0, "temperature": 4.0}],  # the teacher is the only signal
                    train={"epochs": 2, "batch_size": 32, "lr": 0.01, "seed": 0})
    result = fit(task, {"num_workers": 1, "cpus_per_worker": 0.5, "teacher_placement": "actor_pool", "teacher_actors": 1,
                        "teacher_cpus": 0.5},
                 "actor-pool", tmp_path / "ray")
    m = result.metrics
    assert m["epoch"] == 2
    assert m["teacher_forward_examples"] == 0  # the worker never ran the teacher itself
    assert m["accuracy"] > 0.6  # learned from streamed teacher logits alone (chance: 0.1)


def _ce_task(widths, n=1000, epochs=1, seed=0) -> TaskSpec:
    return TaskSpec(dataset={"name": "mnist", "train_subset": n, "test_subset": 500},
                    student={"name": "cnn", "args": {"widths": widths, "hidden": 16}},
                    train={"epochs": epochs, "batch_size": 32, "lr": 0.01, "seed": seed})


@pytest.mark.ray
def test_one_worker_group_trains_several_models_and_a_rerun_keeps_the_finished_ones(ray_session, tmp_path):
    """fit_many trains jobs in turn in one worker group; every checkpoint carries the finished jobs'
    models, so a run started again under the same name skips them and trains only the rest."""
    from safetensors.torch import load_file

    from raykd.engine.trainer import Job, finished_jobs, fit_many

    engine = {"num_workers": 1, "cpus_per_worker": 1}
    a, b = Job("a", _ce_task([2, 4]), "model a"), Job("b", _ce_task([4, 8], epochs=2), "model b")
    first = fit_many([a], engine, "multi", tmp_path / "ray")
    with finished_jobs(first) as done:
        assert set(done) == {"a"}
        a_weights = load_file(done["a"].weights)
    # the same run with a second job: "a" is taken from the checkpoint, only "b" trains
    second = fit_many([a, b], engine, "multi", tmp_path / "ray")
    with finished_jobs(second) as done:
        assert set(done) == {"a", "b"}
        again = load_file(done["a"].weights)
        assert all(torch.equal(again[k], a_weights[k]) for k in a_weights)
        assert done["b"].metrics["epoch"] == 2 and done["b"].metrics["item"] == "b"
        assert all(done[k].metrics["accuracy"] > 0.3 for k in "ab")  # both learned (chance: 0.1)
        assert done["b"].metrics["job_wall_s"] > 0
        m = ClassifyTask(b.task).build_student()
        m.load_state_dict(load_file(done["b"].weights))  # a whole model of b's architecture
    # everything finished: a third start trains nothing and returns the same models
    third = fit_many([a, b], engine, "multi", tmp_path / "ray")
    with finished_jobs(third) as done:
        assert set(done) == {"a", "b"}
        assert all(torch.equal(load_file(done["a"].weights)[k], a_weights[k]) for k in a_weights)


@pytest.mark.ray
def test_cli_run_trains_students_in_one_worker_group_and_prints_a_readable_console(tmp_path):
    """`raykd run` (a fresh process, its own local Ray): the students train in turn in one Ray Train run;
    the console holds one line per epoch per student and the results table, not Ray's report dicts."""
    import subprocess
    import sys

    import yaml

    weights = _train_teacher_plain(tmp_path / "teacher.safetensors", n=3000, epochs=1)
    cfg = {"name": "console", "method": "kd", "output_dir": str(tmp_path / "run"),
           "data": {"name": "mnist", "train_subset": 1500, "test_subset": 500},
           "teacher": {**TEACHER, "checkpoint": str(weights)},
           "students": [{"name": "cnn", "args": {"widths": [2, 4], "hidden": 8}}, STUDENT],
           "losses": [{"name": "kd", "weight": 0.9, "temperature": 4.0}, {"name": "ce", "weight": 0.1}],
           "train": {"epochs": 2, "batch_size": 32, "lr": 0.01}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "raykd.cli", "run", str(tmp_path / "c.yaml")], capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "TrainingReport(" not in out and "Checkpoint successfully created" not in out, out
    assert "PreemptionWatcher" not in out and "Started training worker group" not in out, out
    epochs = [line for line in out.splitlines() if "epoch " in line and "test acc" in line]
    assert len(epochs) == 4, out  # 2 students x 2 epochs
    assert "Results (DS" in out
    runs = [p.name for p in (tmp_path / "run" / "ray").iterdir() if p.is_dir()]
    assert len([r for r in runs if r.endswith("-students")]) == 1, runs  # one worker group for both
    df = read_results(tmp_path / "run")
    kd = df[df["method"] == "kd"]
    assert len(kd) == 2 and (kd["accuracy"] > 0.5).all() and (kd["wall_time_s"] > 0).all()
    assert {json.loads(e)["workers"] for e in kd["extra"]} == {1}  # auto on one machine: one worker
    # the teacher's facts, measured while the worker group started, are all in its row (first in the table)
    teacher = df[df["method"] == "teacher"]
    assert len(teacher) == 1 and df["method"].iloc[0] == "teacher"
    assert teacher["macs"].iloc[0] > 0 and json.loads(teacher["extra"].iloc[0])["latency_ms"] > 0
    assert (kd["teacher_macs"] == teacher["macs"].iloc[0]).all()
