"""Cluster operations: cluster-launcher configs, security defaults, job submission to a real
two-node Ray cluster on this machine, and fault tolerance (each fault test kills, by its process id,
a process that the test itself started).

Default suite: config validation, security checks, and one multi-node distillation job (~1-2 min).
``-m slow``: a sweep submitted as a job to both nodes, a sweep with a node killed, a Train worker killed, an RLlib env runner killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from raykd.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# A distillation job small enough for the shared 2-core machine: MNIST subset, one tiny student,
# 2 Train workers (one per node: each node has 1 CPU).
SMALL_KD = ["data.train_subset=1200", "data.test_subset=300", "teacher.train.epochs=1",
            "students=[{name: cnn, args: {widths: [4, 8], hidden: 16}, label: tiny}]",
            "train.epochs=1", "train.batch_size=64", "engine.num_workers=2"]


# ---- cluster-launcher configs ------------------------------------------------------------------

def _prepared(name: str) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((REPO / name).read_text()))
    validate_config(cfg)  # Ray's own schema; raises on any invalid field
    return cfg


def test_aws_cluster_yaml_is_valid_for_ray_and_has_the_node_types_we_need():
    cfg = _prepared("cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu = [t for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    cpu = [t for n, t in types.items() if n != cfg["head_node_type"] and not t["resources"].get("GPU")]
    assert gpu and cpu, "need a GPU worker type and a CPU worker type"
    for t in gpu + cpu:
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    assert any("pip install" in c and "~/raykd" in c for c in cfg["setup_commands"])
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert all("RAY_AUTH_MODE=token" in " ".join(cfg[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands"))


def test_onprem_cluster_yaml_is_valid_for_ray():
    cfg = _prepared("cluster-onprem.yaml")
    assert cfg["provider"]["type"] == "local"
    (node_type,) = cfg["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(cfg["provider"]["worker_ips"])
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


def test_ray_schema_rejects_a_broken_cluster_yaml():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg["available_node_types"]["gpu_worker"]["resources"] = {"GPU": 0.5}  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


# ---- security ------------------------------------------------------------------------------------

def test_config_with_python_tag_is_rejected_and_not_executed(tmp_path):
    from raykd.cli import main
    from raykd.config import load_config

    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\nmethod: kd\noutput_dir: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError, match="not allowed"):
        load_config(bad)
    assert main(["check", str(bad)]) == 2
    assert not marker.exists()


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent; this only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_job_server_binds_loopback_and_refuses_unauthenticated_requests(ray_session):
    from raykd.submit import auth_token

    url = ray_session._private.worker.global_worker.node.address_info["webui_url"]
    if not url:
        pytest.skip("ray_session runs without a dashboard; test_distillation_job_runs_on_both_nodes checks auth")
    assert url.startswith("127.0.0.1:"), url
    base = f"http://{url}"
    assert requests.get(f"{base}/api/jobs/", timeout=10).status_code == 401
    assert requests.get(f"{base}/api/jobs/", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    ok = requests.get(f"{base}/api/jobs/", headers={"Authorization": f"Bearer {auth_token()}"}, timeout=10)
    assert ok.status_code == 200
    ip = _non_loopback_ip()
    if ip:  # not reachable from another interface
        with pytest.raises(OSError):
            socket.create_connection((ip, int(url.rsplit(":", 1)[1])), timeout=3).close()


def test_submit_rejects_bad_config_before_contacting_a_cluster(tmp_path, capsys):
    from raykd.cli import main

    bad = REPO / "configs" / "mnist_kd.yaml"
    rc = main(["submit", str(bad), "--address", "http://127.0.0.1:9", "--set", "train.epochs=0"])
    assert rc == 2
    assert "train.epochs" in capsys.readouterr().err
    outside = tmp_path / "c.yaml"
    outside.write_text("method: kd\n")
    assert main(["submit", str(outside), "--address", "http://127.0.0.1:9"]) == 2


def test_job_entry_point_exits_with_raykd_status(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "run.py"), "--config", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and "no such config file" in p.stderr


# ---- a real two-node cluster on this machine ------------------------------------------------------

@pytest.fixture
def cluster(monkeypatch):
    from raykd.testing.cluster import LocalCluster

    with LocalCluster() as c:
        for k, v in c.auth_env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        yield c


PLUGIN_LOSS = """
import torch.nn.functional as F

import raykd


@raykd.register_loss("cluster_user_kd")
def cluster_user_kd(student_out, teacher_out, batch, temperature: float = 4.0):
    t = temperature
    return F.kl_div(F.log_softmax(student_out["logits"] / t, -1), F.log_softmax(teacher_out["logits"].float() / t, -1),
                    log_target=True, reduction="batchmean") * t * t + F.cross_entropy(student_out["logits"], batch["label"])
"""


def test_distillation_job_runs_on_both_nodes(cluster, tmp_path):
    """`raykd submit` with a loss from a user file outside the repository: the file travels with the
    job and the Train workers on both nodes import it."""
    from raykd.results import read_results
    from raykd.submit import submit

    assert requests.get(f"{cluster.dashboard_url}/api/jobs/", timeout=10).status_code == 401  # token required
    out = tmp_path / "out"
    plugin = tmp_path / "user_code" / "cluster_losses.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN_LOSS)
    job_id, rc = submit(str(REPO / "configs" / "mnist_kd.yaml"), cluster.dashboard_url,
                        SMALL_KD + ["losses=[{name: cluster_user_kd}]"], output_dir=str(out), plugins=[str(plugin)])
    assert rc == 0, cluster.root
    df = read_results(out)
    students = df[df["method"] == "kd"]
    assert len(students) == 1 and all(json.loads(e)["losses"][0]["name"] == "cluster_user_kd" for e in students["extra"])
    workers = cluster.actors("RayTrainWorker")
    nodes = {a["node_id"] for a in workers}
    assert {cluster.node_id("head"), cluster.node_id("b")} <= nodes
    assert all(a["state"] == "DEAD" for a in workers)  # finished and cleaned up


@pytest.mark.slow
def test_sweep_job_runs_on_both_nodes(cluster, tmp_path):
    """`raykd submit --sweep`: a 2-trial KD sweep as a job; each trial's 2 Train workers (0.5 CPU each,
    SPREAD) fit next to the trial's own 0.01-CPU driver on the two 1-CPU nodes."""
    from raykd.results import read_results
    from raykd.submit import submit

    out = tmp_path / "sweep"
    sets = ["data.train_subset=1200", "data.test_subset=300", "teacher.train.epochs=1", "train.epochs=1",
            "engine.num_workers=2", "engine.cpus_per_worker=0.5", "engine.placement_strategy=SPREAD",
            "sweep.space={student.args.widths: {grid: [[2, 4], [4, 8]]}}"]
    job_id, rc = submit(str(REPO / "configs" / "mnist_sweep.yaml"), cluster.dashboard_url, sets,
                        command="sweep", output_dir=str(out))
    assert rc == 0, cluster.root
    sweep_id = yaml.safe_load((out / "config.yaml").read_text())["run_id"]
    df = read_results(out)
    trials = df[df["run_id"].str.startswith(f"{sweep_id}/")]
    # one row per grid point (the quality of such tiny 1-epoch students is tested elsewhere)
    assert sorted(trials["student"]) == ["cnn(hidden=16,widths=[2, 4])", "cnn(hidden=16,widths=[4, 8])"], trials
    assert trials["accuracy"].between(0, 1).all() and trials["ds"].notna().all()
    assert (out / "leaderboard.csv").exists() and (out / "accuracy_vs_size.png").exists()
    workers = cluster.actors("RayTrainWorker")
    assert {cluster.node_id("head"), cluster.node_id("b")} <= {a["node_id"] for a in workers}
    assert all(a["state"] == "DEAD" for a in workers)


# ---- fault tolerance (slow) -----------------------------------------------------------------------

TUNE_JOB = textwrap.dedent('''
    """A 4-trial Tune sweep (1 CPU per trial); each iteration checkpoints and logs node + pid."""
    import json, os, sys, tempfile, time
    import ray
    from ray import tune

    LOG, STORAGE, ITERS = sys.argv[1], sys.argv[2], 6

    def trainable(config):
        start = 0
        ckpt = tune.get_checkpoint()
        if ckpt:
            with ckpt.as_directory() as d:
                start = json.load(open(os.path.join(d, "state.json")))["it"]
        node = ray.get_runtime_context().get_node_id()
        for it in range(start, ITERS):
            with open(LOG, "a") as f:
                f.write(f"{config['x']} {node} {os.getpid()} {it + 1}\\n")
            time.sleep(1.0)
            with tempfile.TemporaryDirectory() as d:
                json.dump({"it": it + 1}, open(os.path.join(d, "state.json"), "w"))
                tune.report({"it": it + 1}, checkpoint=tune.Checkpoint.from_directory(d))

    ray.init()
    grid = tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2, 3, 4])},
                      run_config=tune.RunConfig(name="node_fault", storage_path=STORAGE,
                                                failure_config=tune.FailureConfig(max_failures=3))).fit()
    print("RESULT " + json.dumps({"errors": len(grid.errors),
                                  "its": sorted(r.metrics["it"] for r in grid)}))
    sys.exit(0 if not grid.errors else 1)
''')


@pytest.mark.slow
def test_sweep_survives_losing_a_node(cluster, tmp_path):
    from ray.job_submission import JobSubmissionClient

    from raykd.submit import auth_headers, exit_status, wait_for

    jobdir, log = tmp_path / "job", tmp_path / "trials.log"
    jobdir.mkdir()
    (jobdir / "tune_job.py").write_text(TUNE_JOB)
    client = JobSubmissionClient(cluster.dashboard_url, headers=auth_headers())
    job_id = client.submit_job(entrypoint=f"python tune_job.py {log} {tmp_path / 'tune'}",
                               runtime_env={"working_dir": str(jobdir)})
    node_b = cluster.node_id("b")
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and node_b in log.read_text()):
        time.sleep(0.5)
    assert log.exists() and node_b in log.read_text(), client.get_job_logs(job_id)
    time.sleep(1.5)  # let the trial on node b write a checkpoint or two
    killed_pid = cluster.kill_node("b")
    assert wait_for(client, job_id) == "SUCCEEDED", client.get_job_logs(job_id)
    assert exit_status(client, job_id) == 0
    result = json.loads(client.get_job_logs(job_id).split("RESULT ", 1)[1].splitlines()[0])
    assert result == {"errors": 0, "its": [6, 6, 6, 6]}
    rows = [line.split() for line in log.read_text().splitlines()]
    on_b = {r[0] for r in rows if r[1] == node_b}
    assert on_b, "no trial ran on node b"
    for x in on_b:  # every trial that lost its node finished elsewhere, resuming after its checkpoint
        after = [r for r in rows if r[0] == x and r[1] != node_b]
        assert after and after[-1][3] == "6"
        assert int(after[0][3]) > 1, "the retried trial restarted from scratch instead of its checkpoint"
    assert killed_pid not in {int(r[2]) for r in rows}


def _checkpoint_epochs(storage: Path) -> list[int]:
    return sorted(json.loads(p.read_text())["epoch"] for p in storage.glob("**/checkpoint_*/state.json"))


def _progress_task():
    """A ClassifyTask that appends ``rank epoch pid`` to ``extra["progress_dir"]/progress.log`` at each
    epoch start, so the test finds a worker's pid and sees which epochs ran after a restart. The class
    travels to the workers by value (this test module is not importable there)."""
    import cloudpickle

    from raykd.engine.task import ClassifyTask

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    class ProgressTask(ClassifyTask):
        def on_epoch_start(self, epoch: int, rank: int) -> None:
            with open(Path(self.spec.extra["progress_dir"]) / "progress.log", "a") as f:
                f.write(f"{rank} {epoch} {os.getpid()}\n")

    return ProgressTask


@pytest.mark.slow
def test_train_worker_killed_resumes_from_last_checkpoint(ray_session, tmp_path):
    from raykd.engine.task import TaskSpec
    from raykd.engine.trainer import fit

    progress, storage = tmp_path / "progress", tmp_path / "ray"
    progress.mkdir()
    epochs = 4
    task = TaskSpec(dataset={"name": "mnist", "train_subset": 4000, "test_subset": 300},
                    student={"name": "cnn", "args": {"widths": [8, 16], "hidden": 32}},
                    losses=[{"name": "ce", "weight": 1.0}],
                    train={"epochs": epochs, "batch_size": 32, "lr": 3e-3, "seed": 0},
                    kind=_progress_task(), extra={"progress_dir": str(progress)})
    killed: dict = {}

    def registered_epoch() -> int:
        """Epoch of the latest checkpoint the Train controller has registered (its persisted snapshot)."""
        snap = storage / "kill_worker" / "checkpoint_manager_snapshot.json"
        try:
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
        except (OSError, ValueError):
            return 0
        return int(latest["metrics"]["epoch"]) if latest else 0

    def killer():
        log = progress / "progress.log"
        deadline = time.time() + 400
        while time.time() < deadline:
            rows = [tuple(map(int, l.split())) for l in log.read_text().splitlines()] if log.exists() else []
            ckpt = registered_epoch()
            running = [r for r in rows if r[0] == 1 and r[1] > ckpt]  # rank 1 is past the registered checkpoint
            if ckpt and running:
                killed["ckpt_epoch"], killed["pid"] = ckpt, running[-1][2]
                os.kill(killed["pid"], signal.SIGKILL)
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    result = fit(task, {"num_workers": 2, "max_failures": 2, "cpus_per_worker": 1}, "kill_worker", storage)
    t.join(timeout=5)
    assert "pid" in killed, "the worker was never killed"
    assert result.metrics["epoch"] == epochs
    rows = [tuple(map(int, l.split())) for l in (progress / "progress.log").read_text().splitlines()]
    rank1 = [(e, pid) for r, e, pid in rows if r == 1]
    last_before_kill = max(i for i, (e, pid) in enumerate(rank1) if pid == killed["pid"])
    after = [e for e, pid in rank1[last_before_kill + 1:]]
    # the replacement starts right after the last checkpoint and runs every remaining epoch exactly once
    assert after == list(range(killed["ckpt_epoch"] + 1, epochs + 1)), (rank1, killed)
    assert _checkpoint_epochs(storage)[-1] == epochs


@pytest.mark.slow
def test_rllib_env_runner_killed_is_restarted(ray_session):
    from ray.rllib.algorithms.ppo import PPOConfig

    config = (PPOConfig().environment("CartPole-v1")
              .env_runners(num_env_runners=1, num_envs_per_env_runner=1, rollout_fragment_length=100)
              .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
              .fault_tolerance(restart_failed_env_runners=True)
              .debugging(seed=0))
    algo = config.build_algo()
    try:
        def runner_pids() -> list[int]:
            return algo.env_runner_group.foreach_env_runner(lambda r: os.getpid(), local_env_runner=False)

        first = algo.train()["num_env_steps_sampled_lifetime"]
        (pid,) = runner_pids()
        os.kill(pid, signal.SIGKILL)
        deadline, new_pids = time.time() + 180, []
        while not new_pids and time.time() < deadline:
            algo.train()  # RLlib notices the dead runner, restarts it and restores its weights
            new_pids = runner_pids() if algo.env_runner_group.num_healthy_remote_workers() == 1 else []
        assert len(new_pids) == 1 and new_pids[0] != pid
        before = algo.train()["num_env_steps_sampled_lifetime"]
        after = algo.train()["num_env_steps_sampled_lifetime"]
        assert after > before >= first > 0  # training continues on the restarted runner
    finally:
        algo.stop()

