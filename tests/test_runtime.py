"""What a local run's Ray exposes, and two runs on one machine (``raykd.runtime``).

Each test starts its own Ray in subprocesses (the suite's shared ``ray_session`` is not used: a
second local instance in this process is impossible, and the point is several instances at once)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)

import psutil

from raykd.paths import cache_dir

ROOT = Path(__file__).resolve().parents[1]

# A local Ray started the way `raykd run` starts it, held up until stdin closes. An actor asks the
# state API, as Ray Train's placement-group cleaner does, which dashboard it reaches and whether it
# finds itself there.
LOCAL_RAY = """
import json, os, sys
import ray
from raykd.runtime import init_ray

init_ray(num_cpus=1)

@ray.remote(num_cpus=0)
class Probe:
    def lookup(self):
        from ray.dashboard.utils import get_address_for_submission_client
        from ray.util.state import get_actor
        state = get_actor(ray.get_runtime_context().get_actor_id())
        return get_address_for_submission_client(None), state.state if state else None

probe = Probe.remote()
api, state = ray.get(probe.lookup.remote())
node = ray._private.worker.global_worker.node
info = {"gcs": ray.get_runtime_context().gcs_address, "dashboard": "http://" + node.address_info["webui_url"],
        "state_api": api, "own_actor": state, "driver_env_ray_address": os.environ.get("RAY_ADDRESS")}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(info, f)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
sys.stdin.read()
"""


def clean_env(**extra) -> dict:
    """This environment without an address of a cluster (so a subprocess starts its own local Ray)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return {**env, "RAY_TRAIN_V2_ENABLED": "1", **extra}


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def listening_sockets(pid: int) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP/UDP socket of ``pid`` and its descendants:
    for a driver that started Ray, every process of its Ray session."""
    root = psutil.Process(pid)
    procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    found = set()
    for c in psutil.net_connections(kind="inet"):
        bound_udp = c.type == socket.SOCK_DGRAM and c.laddr and not c.raddr
        if c.pid in procs and (c.status == psutil.CONN_LISTEN or bound_udp):
            try:
                name = procs[c.pid].name()
            except psutil.Error:
                name = "?"
            found.add((c.laddr.ip, c.laddr.port, name))
    return found


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail(f"local Ray did not come up (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return json.loads(path.read_text())


def test_two_local_runtimes_listen_on_loopback_only_and_stay_apart(tmp_path):
    """Two local runtimes at once: every process of each Ray session listens on loopback only, and
    the state API lookup inside each (what Ray Train's placement-group cleaner relies on) reaches
    its own dashboard and finds its own actor, not the other instance."""
    procs, infos = [], []
    try:
        for name in ("a", "b"):
            log = tmp_path / f"{name}.log"
            p = subprocess.Popen([sys.executable, "-c", LOCAL_RAY, str(tmp_path / f"{name}.json")], cwd=ROOT,
                                 env=clean_env(), stdin=subprocess.PIPE, stdout=log.open("w"), stderr=subprocess.STDOUT)
            procs.append((p, log))
        for (p, log), name in zip(procs, ("a", "b")):
            infos.append(wait_for(tmp_path / f"{name}.json", p, log))
        sockets = [listening_sockets(p.pid) for p, _ in procs]
    finally:
        for p, _ in procs:
            p.stdin.close()
        for p, _ in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()

    a, b = infos
    assert a["gcs"] != b["gcs"] and a["dashboard"] != b["dashboard"]
    shared = {port for _, port, _ in sockets[0]} & {port for _, port, _ in sockets[1]}
    assert not shared, f"both instances listen on ports {sorted(shared)}: each should have its own"
    for info, socks in zip(infos, sockets):
        assert info["gcs"].startswith("127.0.0.1:"), info
        gcs_port = int(info["gcs"].rsplit(":", 1)[1])
        assert any(port == gcs_port for _, port, _ in socks), f"the GCS port is not among {sorted(socks)}"
        exposed = sorted(s for s in socks if not is_loopback(s[0]))
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert info["state_api"] == info["dashboard"], info  # the lookup stays inside this instance
        assert info["own_actor"] == "ALIVE", info
        assert info["driver_env_ray_address"] is None, "init_ray must leave the driver's environment as it was"


def small_run(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "raykd.cli", "run", "configs/mnist_kd.yaml",
            "--set", "data.train_subset=1200", "--set", "data.test_subset=300",
            "--set", "teacher.train.epochs=1", "--set", "train.epochs=1", "--set", "engine.num_workers=1",
            "--set", "teacher.train.batch_size=32", "--set", "train.batch_size=32",
            "--set", "students=[{name: cnn, args: {widths: [4, 8], hidden: 16}, label: tiny}]",
            "--output-dir", str(out), *extra]


@pytest.mark.slow
def test_two_runs_at_once_on_one_machine(tmp_path):
    """Two `raykd run` started at once, as from two terminals, each with its own local Ray: both
    finish with a complete results table (teacher row + student row, accuracy well above chance).
    The second run trains a different teacher, so both runs train with Ray Train at the same time."""
    home = tmp_path / "home"  # trained teachers go here; datasets and wheels are the usual cache's
    home.mkdir()
    for shared in ("datasets", "wheels"):
        (home / shared).symlink_to(cache_dir(shared), target_is_directory=True)
    env = clean_env(RAYKD_HOME=str(home))
    runs = {"a": small_run(tmp_path / "a"), "b": small_run(tmp_path / "b", "--set", "teacher.train.lr=0.004")}
    t0 = time.time()
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=(tmp_path / f"{name}.log").open("w"),
                                    stderr=subprocess.STDOUT) for name, cmd in runs.items()}
    try:
        codes = {name: p.wait(timeout=900) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    print(f"two runs at once: {time.time() - t0:.0f} s")
    for name, code in codes.items():
        log = (tmp_path / f"{name}.log").read_text()
        assert code == 0, f"run {name} exited {code}:\n{log[-4000:]}"
        assert "Found multiple active Ray instances" not in log, f"run {name}: a Ray lookup saw the other run"
        assert "PlacementGroupCleanerMonitor" not in log, f"run {name}: the placement-group cleaner failed:\n{log[-4000:]}"
        table = pd.read_csv(tmp_path / name / "results.csv")
        assert len(table) == 2, table
        teacher = table[table["method"] == "teacher"]
        student = table[table["method"] == "kd"]
        assert len(teacher) == 1 and len(student) == 1, table
        assert teacher["accuracy"].iloc[0] > 0.7, table  # chance is 0.1; about 0.87 here
        assert student["accuracy"].iloc[0] > 0.4, table  # about 0.55 here
