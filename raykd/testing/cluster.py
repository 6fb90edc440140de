"""A real multi-node Ray cluster on one machine, for tests, benchmarks and trying the cluster recipe.

``LocalCluster`` runs ``ray start --head`` and one ``ray start --address`` per extra node, exactly the
commands of the README's "run on a cluster" section, each node in its own temp dir with its own free
ports and its own resources (custom resources such as ``fake_gpu`` stand in for GPU nodes)::

    with LocalCluster() as c:                      # head {"node_head": 1} + node b {"node_b": 1, "fake_gpu": 1}
        c.dashboard_url                            # http://127.0.0.1:<port>  (job server; bound to loopback)
        c.client_env()                             # env for `ray job submit` / drivers: address + token
        c.kill_node("b")                           # SIGKILL that node's raylet (fault-tolerance tests)

Security: the dashboard and job server bind to 127.0.0.1, and token authentication is on
(``RAY_AUTH_MODE=token``) with a fresh random token kept in a 0600 file that only this cluster and its
clients read (``RAY_AUTH_TOKEN_PATH``). Every node runs ``ray start --block`` as a child of this process,
so stopping ends exactly the processes this cluster started (by their process ids and process groups),
never other Ray clusters on the machine (``ray stop`` would end them all).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from raykd.errors import UserError

# Detect a dead node within a few seconds instead of Ray's default ~30 s (tests kill raylets).
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                          "RAY_health_check_failure_threshold": "3"}


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the "(comm)" field


def descendant_pids(root: int) -> list[int]:
    """Pids of all living descendants of ``root`` (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _ppid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NodeSpec:
    """One node: a name, logical CPUs and custom resources (e.g. ``{"node_b": 1, "fake_gpu": 1}``)."""

    name: str
    num_cpus: int = 1
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class Node:
    spec: NodeSpec
    proc: subprocess.Popen
    temp_dir: Path
    log: Path

    def descendants(self) -> list[int]:
        return descendant_pids(self.proc.pid)

    def raylet_pid(self) -> int | None:
        for pid in self.descendants():
            if process_name(pid) == "raylet":
                return pid
        return None


def default_nodes() -> list[NodeSpec]:
    return [NodeSpec("head", 1, {"node_head": 1}), NodeSpec("b", 1, {"node_b": 1, "fake_gpu": 1})]


class LocalCluster:
    """Start a head node and extra nodes with ``ray start``; always stops them on exit."""

    def __init__(self, nodes: list[NodeSpec] | None = None, root: str | Path | None = None,
                 fast_failure_detection: bool = True, object_store_memory: int = 200 * 1024**2,
                 start_timeout_s: float = 90.0):
        self.specs = nodes or default_nodes()
        if len({s.name for s in self.specs}) != len(self.specs):
            raise UserError("LocalCluster: node names must be unique")
        # short root: Ray's unix socket paths must stay under ~107 characters
        self.root = Path(root or tempfile.mkdtemp(prefix="rkd-", dir="/tmp"))
        self.fast_failure_detection = fast_failure_detection
        self.object_store_memory = object_store_memory
        self.start_timeout_s = start_timeout_s
        self.nodes: dict[str, Node] = {}
        self.gcs_port, self.dashboard_port = free_ports(2)
        self.token_path = self.root / "auth_token"

    # ---- addresses and credentials ------------------------------------------------------------
    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def auth_env(self) -> dict[str, str]:
        """Token authentication for every Ray process of this cluster and for its clients."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def node_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        # `python` in a job's entrypoint is this interpreter (the venv that has ray and raykd)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.auth_env())
        env.setdefault("RAY_TRAIN_V2_ENABLED", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        if self.fast_failure_detection:
            env.update(FAST_FAILURE_DETECTION)
        return env

    def client_env(self) -> dict[str, str]:
        """Environment for a driver or ``ray job submit`` aimed at this cluster."""
        env = self.node_env()
        env["RAY_ADDRESS"] = self.gcs_address
        return env

    # ---- lifecycle ----------------------------------------------------------------------------
    def _ray(self) -> str:
        exe = Path(sys.executable).parent / "ray"
        return str(exe) if exe.exists() else "ray"

    def _start_node(self, spec: NodeSpec, head: bool) -> Node:
        tdir = self.root / spec.name
        tdir.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{spec.name}.log"
        p0, p1, p2, p3, p4, p5, p6 = free_ports(7)
        cmd = [self._ray(), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
               "--num-cpus", str(spec.num_cpus), "--num-gpus", "0", "--resources", json.dumps(spec.resources),
               "--temp-dir", str(tdir), "--object-store-memory", str(self.object_store_memory),
               "--node-manager-port", str(p0), "--object-manager-port", str(p1),
               "--dashboard-agent-listen-port", str(p2), "--dashboard-agent-grpc-port", str(p3),
               "--runtime-env-agent-port", str(p4), "--metrics-export-port", str(p5)]
        if head:
            cmd += ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(p6)]
        else:
            cmd += ["--address", self.gcs_address]
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.node_env(),
                                    start_new_session=True)
        return Node(spec, proc, tdir, log)

    def start(self) -> "LocalCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        try:
            head, *rest = self.specs
            self.nodes[head.name] = self._start_node(head, head=True)
            self._wait(lambda: self._alive_nodes() >= 1 and self._dashboard_up(), "head node")
            for spec in rest:
                self.nodes[spec.name] = self._start_node(spec, head=False)
            self._wait(lambda: self._alive_nodes() >= len(self.specs), f"{len(self.specs)} nodes")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray start for node {node.spec.name!r} exited with {node.proc.returncode}; "
                                       f"log: {node.log}\n{node.log.read_text()[-3000:]}")
            if ready():
                return
            time.sleep(1.0)
        raise TimeoutError(f"LocalCluster: {what} not up after {self.start_timeout_s:.0f} s (logs in {self.root})")

    def _get(self, path: str, timeout: float = 5.0):
        import requests

        return requests.get(self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=timeout)

    def _dashboard_up(self) -> bool:
        try:
            return self._get("/api/version").ok
        except Exception:
            return False

    def alive_nodes(self) -> list[dict]:
        """Nodes the GCS reports alive (from the state API), each with its resources."""
        r = self._get("/api/v0/nodes?limit=100&detail=1")
        r.raise_for_status()
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def _alive_nodes(self) -> int:
        try:
            return len(self.alive_nodes())
        except Exception:
            return 0

    def node_id(self, name: str) -> str:
        """Ray node id of the node started as ``name`` (matched by its custom resources)."""
        want = set(self.nodes[name].spec.resources)
        for n in self.alive_nodes():
            if want and want <= set(n.get("resources_total", {})):
                return n["node_id"]
        raise KeyError(f"node {name!r} is not alive")

    def actors(self, class_contains: str = "") -> list[dict]:
        """Actors (alive and dead) from the state API, optionally filtered by class name."""
        r = self._get("/api/v0/actors?limit=10000&detail=1")
        r.raise_for_status()
        return [a for a in r.json()["data"]["result"]["result"] if class_contains in a.get("class_name", "")]

    def kill_node(self, name: str) -> int:
        """SIGKILL the raylet of node ``name`` (a process this cluster started); returns its pid."""
        pid = self.nodes[name].raylet_pid()
        if pid is None:
            raise RuntimeError(f"no raylet process found for node {name!r}")
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        """Stop every node this cluster started (workers first, head last), by pid and process group."""
        for name in reversed(list(self.nodes)):
            node = self.nodes[name]
            procs = node.descendants()
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)  # `ray start --block` then stops its own processes
                try:
                    node.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(timeout=10)
            for pid in procs:  # anything that outlived its parent
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m raykd.testing.cluster [--seconds N]``: start the 2-node cluster, print how to reach it, hold it."""
    import argparse

    p = argparse.ArgumentParser(description="Start a head + one worker node Ray cluster on this machine.")
    p.add_argument("--seconds", type=float, default=3600, help="how long to keep it up (Ctrl-C stops it)")
    p.add_argument("--cpus", type=int, default=1, help="logical CPUs per node")
    args = p.parse_args(argv)
    nodes = [NodeSpec("head", args.cpus, {"node_head": 1}), NodeSpec("b", args.cpus, {"node_b": 1, "fake_gpu": 1})]
    with LocalCluster(nodes) as c:
        print(f"dashboard / job server: {c.dashboard_url}\nexport RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={c.token_path}",
              flush=True)
        try:
            time.sleep(args.seconds)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
