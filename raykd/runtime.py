"""The one place raykd starts or joins Ray.

``init_ray(address)`` connects to the cluster named by ``address`` or ``RAY_ADDRESS`` (``ray job
submit`` sets it; ``auto`` joins a cluster started with ``ray start`` on this machine). Without one it
starts a private Ray that lives as long as this process:

* **Loopback only.** The node's IP is 127.0.0.1, so the GCS, raylet, object manager, workers, the
  dashboard and its agents, and the Prometheus metrics endpoints listen on 127.0.0.1 only. This is
  Ray's own local-only mode (``ray.init`` on macOS and Windows), switched on by
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; gloo (torch.distributed) is kept on loopback too. (Not
  covered: the torch.distributed TCPStore of a Ray Train run's rank-0 worker binds every interface;
  torch has no bind-address setting for it.)
* **Isolated.** Two runs on one machine each get their own instance, with their own ports, and
  nothing reaches across. Ray Train's placement-group cleaner asks the state API, every second,
  whether its run's controller is alive. Told no address, the state API client picks the GCS named
  in ``/tmp/ray/ray_current_cluster`` (the last ``ray start``) or the only GCS in the process list: with
  a second instance the lookup failed ("Found multiple active Ray instances", and the cleaner stopped
  working) or asked the other instance, which does not know the controller, so the cleaner took it for
  dead and would remove the run's placement group: the run loses its workers. Here every process of
  the instance starts with ``RAY_ADDRESS`` naming its own GCS (on a port chosen beforehand), so such
  lookups stay inside; ``ray.init(address="local")`` never joins a cluster it was not told to join.

The dashboard (127.0.0.1, the first free port from 8265) stays on: the placement-group cleaner reads
actor states through it. Ray's token authentication stays on (``~/.ray/auth_token``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from unittest import mock


def init_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True,
             logging_level: str = "WARNING", plugins: list[str] | None = None, **init_kwargs) -> bool:
    """Connect to the cluster at ``address`` (or ``RAY_ADDRESS``), else start an isolated loopback-only
    local Ray with ``num_cpus`` CPUs (default: all). Does nothing when Ray is already initialised.

    ``plugins`` (see :mod:`raykd.plugins`) are imported in every worker process of the job, on a local
    Ray and on a cluster alike. ``init_kwargs`` go to ``ray.init`` for a local start (e.g.
    ``object_store_memory``). Returns True when this call started a private local Ray (its caller may
    shut it down when done), False when Ray was up already or a cluster was joined."""
    import ray

    from raykd.plugins import runtime_env

    if ray.is_initialized():
        job_env = ray.get_runtime_context().runtime_env or {}
        if plugins and "RAYKD_PLUGINS" not in job_env.get("env_vars", {}):
            print("[raykd] Ray was started before raykd: the plugins reach Ray Train workers (their loop is given "
                  "them) but not Tune trials or teacher actors on other nodes; start Ray with "
                  "ray.init(runtime_env=raykd.plugins.runtime_env()) or let raykd start it", flush=True)
        return False
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray Train's controller polls its workers every 2 s by default, so a short run waited up to 2 s
    # to be seen starting and finishing; 0.2 s costs the controller little and no run waits for it
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        env = runtime_env(plugins, ship_modules=False)
        ray.init(address=address, logging_config=ray.LoggingConfig(log_level=ray_log_level()),
                 **({"runtime_env": env} if env else {}))
        return False
    env = runtime_env(plugins)
    if env:
        init_kwargs["runtime_env"] = env
    # Ray Train's preemption watcher (an actor per run) listens for cloud nodes' preemption notices; a
    # private instance on this machine gets none, and the watcher's start logged an error line per run
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    try:
        _start_local(num_cpus=num_cpus, dashboard=dashboard, logging_level=logging_level, **init_kwargs)
    except RuntimeError as e:  # the GCS port chosen beforehand was taken in the meantime: try another once
        if "GCS" not in str(e):
            raise
        _start_local(num_cpus=num_cpus, dashboard=dashboard, logging_level=logging_level, **init_kwargs)
    prestart_train_coordinator()
    return True


def prestart_train_coordinator() -> None:
    """Start the actor Ray Train's controller asks for resources before it starts any worker.

    Each Train run's controller first gets or creates the detached ``AutoscalingCoordinator`` actor
    (Ray Data's, one per cluster) and waits on it: on a fresh local Ray that is a process start (1-2 s
    on 2 cores) on the critical path of the first run. Created here, right after ``ray.init``, it starts
    while the driver prepares the run, on one of the idle workers Ray keeps ready; the controller then
    finds it by name. Ray's own function, so the actor is the one Train would create; where it is
    missing (another Ray version) nothing is done and Train creates it as before."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()


def shutdown_in_background():
    """Shut down Ray in a thread (a private instance's processes take a second or two to stop): the
    caller writes its report meanwhile and joins the returned thread."""
    import threading

    import ray

    t = threading.Thread(target=ray.shutdown, name="raykd-ray-shutdown")
    t.start()
    return t


def verbose() -> bool:
    """Whether Ray's own messages are shown (``raykd ... --verbose``, or ``RAYKD_VERBOSE=1``); without,
    the console holds raykd's lines: one per epoch of each model, and the results table."""
    return os.environ.get("RAYKD_VERBOSE", "") not in ("", "0")


def quiet_ray_data() -> None:
    """Without ``--verbose``, a Ray Data pipeline run from this process (the teacher's outputs over the
    training split) logs no execution plans or per-operator progress: raykd prints its own progress line."""
    if verbose():
        return
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)


def ray_log_level() -> str:
    """Level of Ray Train's own ``ray.train`` logs (worker-group start-up, each report, checkpoint paths)."""
    return "INFO" if verbose() else "WARNING"


def local_env() -> dict[str, str]:
    """Environment of every process of a new local Ray: loopback only, and its own ports."""
    gcs, dashboard_metrics, autoscaler_metrics = free_loopback_ports(3)
    env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's local-only mode: node IP 127.0.0.1, servers bind to it
        "RAY_GCS_SERVER_PORT": str(gcs),
        "RAY_ADDRESS": f"127.0.0.1:{gcs}",  # lookups by any process of this instance find this instance
        # Prometheus endpoints of the dashboard and the autoscaler have fixed default ports (44227,
        # 44217) that a second instance could not bind (its metrics would be announced at the first's)
        "DASHBOARD_METRIC_PORT": str(dashboard_metrics),
        "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics),
    }
    loopback = next((name for _, name in socket.if_nameindex() if name in ("lo", "lo0")), None)
    if loopback:
        env["GLOO_SOCKET_IFNAME"] = loopback  # torch.distributed (gloo) in Train workers: loopback only
    return env


def _start_local(*, num_cpus: int | None, dashboard: bool, logging_level: str, **init_kwargs) -> None:
    import ray
    from ray._private import ray_constants
    from ray._private.parameter import RayParams

    # Two things ray.init offers no argument for, patched in this process for the call only:
    # ENABLE_RAY_CLUSTER is read from the environment when Ray is imported (usually before this), and
    # the dashboard agent's HTTP port defaults to a fixed 52365 (0: a free port, as Ray's own
    # cluster_utils starts several nodes on one machine). The processes started read the environment.
    env = local_env()
    job_env = init_kwargs.get("runtime_env")
    if job_env and "env_vars" in job_env:
        # a worker started with the job's env vars must still find this instance (Ray Train's placement
        # group cleaner looks it up; with another Ray on the machine it would give up and remove the group)
        init_kwargs["runtime_env"] = {**job_env, "env_vars": {**job_env["env_vars"], "RAY_ADDRESS": env["RAY_ADDRESS"]}}
    if not verbose():  # Ray's notice that token authentication is on (it stays on), at every start
        import logging

        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    with _environ(env), mock.patch.object(ray_constants, "ENABLE_RAY_CLUSTER", False), \
            mock.patch.object(RayParams, "__init__", functools.partialmethod(RayParams.__init__, dashboard_agent_listen_port=0)):
        # the job's Python logging (driver, tasks, actors, Train workers) at ray_log_level(): Ray Train's
        # per-report lines are logged under a logger its own LoggingConfig does not reach
        init_kwargs.setdefault("logging_config", ray.LoggingConfig(log_level=ray_log_level()))
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 logging_level=logging_level, **init_kwargs)


def free_loopback_ports(n: int) -> list[int]:
    """``n`` different TCP ports that are free on 127.0.0.1 now (the kernel's choice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """Set environment variables for the duration of the block (processes started meanwhile inherit
    them), then restore the old values: this process's own environment is left as it was, so a later
    ``init_ray`` or a ``raykd`` subprocess started by it does not mistake this instance for a cluster."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
