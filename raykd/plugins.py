"""User code in plugins: module names or ``.py`` files that register losses, models, datasets or
methods when imported.

A config lists them under ``plugins:`` (``raykd run --plugin`` adds more). They are imported in the
driver before the config is validated, so the names they register resolve, and in the Ray workers
that run raykd code: the Train workers' loop, Tune trials (they validate their trial's config), the
teacher-inference actors and dataset distillation's workers call :func:`setup_worker` before they
build anything. The run's Ray job carries the list in ``RAYKD_PLUGINS`` and the ``.py`` files as
``py_modules``, so that workers on other nodes can import them (see :mod:`raykd.runtime`).

Ray's ``worker_process_setup_hook`` would import them in every worker process instead, but with it,
Ray Train's placement-group cleaner on a machine running a second Ray instance judged live
controllers dead and removed their workers' placement groups (tests/test_plugins.py after another
test's Ray), so raykd imports plugins where it needs them.

A ``.py`` file is imported as a top-level module named after the file (its folder goes on
``sys.path``), so objects defined in it pickle by reference and unpickle in the workers.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from raykd.errors import UserError

ENV = "RAYKD_PLUGINS"
_LOADED: dict[str, str] = {}  # normalised plugin -> module name


def normalise(plugin: str, base: Path | None = None) -> str:
    """A module name as it is; a ``.py`` file as an absolute path (relative paths: from the working
    directory, else from ``base``, the config's folder)."""
    if not plugin.endswith(".py"):
        return plugin
    p = Path(plugin).expanduser()
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p] + ([base / p] if base else [])):
        if cand.is_file():
            return str(cand.resolve())
    for uploaded in (p.stem, f"raykd_job_plugins.{p.stem}"):  # uploaded with a job (raykd submit)
        try:
            if importlib.util.find_spec(uploaded) is not None:
                return uploaded
        except ModuleNotFoundError:
            continue
    raise UserError(f"plugins: {plugin}: no such file; give a .py file (relative to the working directory or the "
                    "config's folder) or an importable module name")


def load_plugins(plugins: list[str], base: Path | None = None) -> list[str]:
    """Import each plugin once; returns them normalised (what the workers are given)."""
    out = []
    for plugin in plugins:
        key = normalise(plugin, base)
        if key not in _LOADED:
            _LOADED[key] = _import(plugin, key)
        out.append(key)
    return out


def _import(plugin: str, key: str) -> str:
    name = Path(key).stem if key.endswith(".py") else key
    if key.endswith(".py"):
        folder = str(Path(key).parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        existing = sys.modules.get(name)
        if existing is not None and getattr(existing, "__file__", None) and Path(existing.__file__).resolve() != Path(key):
            raise UserError(f"plugins: {plugin}: a module named {name!r} is already imported from {existing.__file__}; "
                            "rename the file")
    try:
        importlib.import_module(name)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any error in user code becomes one sentence naming the plugin
        raise UserError(f"plugins: {plugin}: importing it failed ({type(e).__name__}: {e})") from None
    return name


def loaded() -> list[str]:
    """The plugins imported in this process (normalised)."""
    return list(_LOADED)


def worker_env() -> dict[str, str]:
    """Environment that makes a Ray worker import this process's plugins."""
    return {ENV: json.dumps(loaded())} if _LOADED else {}


def _shipped(key: str) -> str | None:
    """Where the code of a loaded plugin lives, if Ray must carry it to the workers: a ``.py`` file, or
    the folder of a package imported from outside the installed packages (None: installed, or a module
    that the workers import from the same environment)."""
    if key.endswith(".py"):
        return key
    mod = sys.modules.get(_LOADED.get(key, key))
    path = getattr(mod, "__file__", None)
    if not path or any(part in ("site-packages", "dist-packages") for part in Path(path).parts):
        return None
    if getattr(mod, "__path__", None) and "." not in key:
        return str(Path(path).parent)  # a top-level package: ship the folder
    return path if "." not in key else None


def runtime_env(plugins: list[str] | None = None, ship_modules: bool = True) -> dict:
    """The job-level Ray runtime env that makes every worker process import ``plugins`` (default: those
    loaded here): their list in ``RAYKD_PLUGINS`` and their files as ``py_modules`` (on a cluster only
    ``.py`` files: module plugins come with the job's own code, e.g. ``raykd submit``'s working_dir),
    for :func:`setup_worker` in the workers."""
    plugins = loaded() if plugins is None else plugins
    if not plugins:
        return {}
    shipped = [p for p in (_shipped(k) for k in plugins if ship_modules or k.endswith(".py")) if p]
    # env vars merge per variable with a job's own runtime env under `ray job submit`
    env: dict = {"env_vars": {ENV: json.dumps(list(plugins))}}
    if shipped:
        env["py_modules"] = list(dict.fromkeys(shipped))
    return env


def setup_worker(plugins: list[str] | None = None) -> None:
    """In a Ray worker: import the plugins (given, or named in ``RAYKD_PLUGINS``).
    A ``.py`` plugin is imported by its module name (``py_modules`` put it on the worker's path), else
    from its absolute path where the file exists on that machine. Raises :class:`UserError` naming the
    plugin that fails."""
    if plugins is None:
        listed = os.environ.get(ENV)
        plugins = json.loads(listed) if listed else []
    for key in plugins:
        if key in _LOADED:
            continue
        name = Path(key).stem if key.endswith(".py") else key
        if name in sys.modules:
            _LOADED[key] = name
            continue
        try:
            importlib.import_module(name)
            _LOADED[key] = name
        except ImportError:
            if not (key.endswith(".py") and Path(key).is_file()):
                raise UserError(f"plugins: {key}: cannot be imported on this Ray worker ({os.uname().nodename}); "
                                "install it there or give it as a .py file") from None
            load_plugins([key])
