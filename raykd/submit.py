"""``raykd submit CONFIG --address http://127.0.0.1:8265``: run a config as a Ray job on a cluster.

The config is validated here first (a bad config fails with exit status 2 before anything is
uploaded); then Ray's Job SDK (:class:`ray.job_submission.JobSubmissionClient`) uploads this repository
as the job's ``working_dir`` (without ``.venv``, ``runs``, ``.git``), runs ``python -m raykd.cli run
CONFIG`` (or ``sweep``) on the cluster, streams the job's logs with ``tail_job_logs`` and returns the
job's exit status. With ``--no-wait`` it prints the submission id and returns at once.

Token authentication: the token is sent as ``Authorization: Bearer <token>``, read the way Ray reads
it: ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from raykd.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", "runs", ".git", "benchmarks/out", "**/__pycache__", ".pytest_cache", "*.egg-info"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def auth_token() -> str | None:
    """The cluster token, from the same places (and in the same order) as Ray itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError:
            token = ""
        if not token:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read a token from this file")
        return token
    default = Path.home() / ".ray" / "auth_token"
    return default.read_text().strip() if default.exists() else None


def auth_headers() -> dict[str, str]:
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def runtime_env(extra_env: dict[str, str] | None = None, plugin_dirs: list[str] | None = None) -> dict:
    """The job's runtime_env: this repository as working_dir (the cluster already has raykd's
    dependencies), and the package of ``.py`` plugins as ``py_modules`` (see :func:`job_plugins`)."""
    env = {"working_dir": str(REPO), "excludes": EXCLUDES,
           "env_vars": {"RAY_TRAIN_V2_ENABLED": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}
    env["env_vars"].update(extra_env or {})
    if plugin_dirs:
        env["py_modules"] = list(plugin_dirs)
    return env


JOB_PLUGINS = "raykd_job_plugins"  # the package a job's .py plugins are uploaded as


def job_plugins(config: str, plugins: list[str], staging: Path) -> tuple[list[str], list[str]]:
    """(plugin arguments for the job's command line, folders to upload as ``py_modules``). The job
    server uploads folders, not single files: ``.py`` plugins (from ``--plugin`` or the config's
    ``plugins:``) are copied into one package, ``raykd_job_plugins``, and named by module path there."""
    import shutil

    from raykd.config import load_yaml
    from raykd.plugins import normalise

    listed = load_yaml(config).get("plugins") or []
    base = Path(config).resolve().parent
    files = [normalise(p, base) for p in [*listed, *plugins] if isinstance(p, str) and p.endswith(".py")]
    args = [p for p in plugins if not p.endswith(".py")]
    if not files:
        return args, []
    package = staging / JOB_PLUGINS
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for f in dict.fromkeys(files):
        shutil.copy(f, package / Path(f).name)
        args.append(f"{JOB_PLUGINS}.{Path(f).stem}")
    return args, [str(package)]


def repo_relative(config: str) -> str:
    """The config's path inside the repository (the job sees the uploaded copy, not this machine's files)."""
    p = Path(config).expanduser().resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        raise UserError(f"{config}: the config must be inside the repository ({REPO}) so it is uploaded with the job") from None


def entrypoint(command: str, config: str, overrides: list[str], output_dir: str | None, plugins: list[str] = ()) -> str:
    args = [command, config] + [a for kv in overrides for a in ("--set", kv)] + [a for p in plugins for a in ("--plugin", p)]
    if output_dir:
        args += ["--output-dir", output_dir]
    return "python -m raykd.cli " + " ".join(shlex.quote(a) for a in args)


def make_client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except (AuthenticationError, ConnectionError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, AuthenticationError) or "Authentication" in str(e):
            raise UserError(f"--address {address}: the job server refused the token ({first}); put the cluster's "
                            "token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token") from None
        raise UserError(f"--address {address}: cannot reach a Ray job server there ({first})") from None


async def _stream_logs(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        print(chunk, end="", flush=True)


def wait_for(client, job_id: str, poll_s: float = 1.0) -> str:
    status = str(client.get_job_status(job_id).value)
    while status not in TERMINAL:
        time.sleep(poll_s)
        status = str(client.get_job_status(job_id).value)
    return status


def exit_status(client, job_id: str) -> int:
    """0 if the job succeeded, else the driver's exit code (1 when the job never ran its driver)."""
    info = client.get_job_info(job_id)
    status = str(info.status.value)
    if status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    if status == "STOPPED":
        return 130
    return int(code) if code not in (None, 0) else 1


def submit(config: str, address: str, overrides: list[str] | None = None, command: str = "run",
           output_dir: str | None = None, wait: bool = True, extra_env: dict[str, str] | None = None,
           submission_id: str | None = None, plugins: list[str] | None = None) -> tuple[str, int]:
    """Validate ``config``, submit it as a job, optionally follow it; returns (submission id, exit status)."""
    from raykd.config import load_config

    overrides, plugins = list(overrides or []), list(plugins or [])
    load_config(config, overrides, plugins)  # bad input fails here, with exit status 2, before any upload
    rel = repo_relative(config)
    client = make_client(address)
    with tempfile.TemporaryDirectory() as staging:  # uploaded by submit_job, not needed afterwards
        plugin_args, plugin_dirs = job_plugins(config, plugins, Path(staging))
        job_id = client.submit_job(entrypoint=entrypoint(command, rel, overrides, output_dir, plugin_args),
                                   runtime_env=runtime_env(extra_env, plugin_dirs), submission_id=submission_id,
                                   metadata={"raykd_config": rel})
    print(f"[raykd] submitted {rel} as job {job_id} to {address}", file=sys.stderr, flush=True)
    if not wait:
        return job_id, 0
    try:
        asyncio.run(_stream_logs(client, job_id))
    except RuntimeError as e:  # the log stream can close early; the job's status is what counts
        print(f"[raykd] log stream ended: {e}", file=sys.stderr)
    status = wait_for(client, job_id)
    code = exit_status(client, job_id)
    print(f"[raykd] job {job_id}: {status} (exit status {code})", file=sys.stderr, flush=True)
    return job_id, code


def cmd_submit(args) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("--address: name the job server, e.g. --address http://127.0.0.1:8265")
    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address {address}: expected the job server's URL, e.g. http://127.0.0.1:8265")
    _, code = submit(args.config, address, args.set, command=args.sweep and "sweep" or "run",
                     output_dir=args.output_dir, wait=not args.no_wait, plugins=args.plugin)
    return code


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("submit", help="run a config as a Ray job on a cluster (Job SDK), streaming its logs")
    p.add_argument("config")
    p.add_argument("--address", default=None, help="job server URL (default: $RAY_ADDRESS), e.g. http://127.0.0.1:8265")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--output-dir", default=None, help="override output_dir (use storage every node can reach)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                   help="user code to import on the cluster (a .py file is uploaded with the job)")
    p.add_argument("--sweep", action="store_true", help="run `raykd sweep CONFIG` instead of `raykd run CONFIG`")
    p.add_argument("--no-wait", action="store_true", help="print the submission id and return without following the job")
    p.set_defaults(fn=cmd_submit)
