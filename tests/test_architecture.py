"""The package's shape: layers that point one way and no import cycles (import-linter, contracts in
``.importlinter``), and every top-level module of ``raykd`` placed in a layer."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    r = _lint_imports(REPO)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in r.stdout


def _layers() -> list[str]:
    cp = configparser.ConfigParser()
    cp.read(REPO / ".importlinter")
    return [line.strip() for line in cp["importlinter:contract:layers"]["layers"].strip().splitlines()]


def test_every_top_level_module_is_in_a_layer():
    placed = {name for layer in _layers() for name in re.split(r"[|:]", layer) for name in [name.strip()] if name}
    package = REPO / "raykd"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert modules - placed == set(), f"modules outside the layers of .importlinter: {sorted(modules - placed)}"


def test_the_contract_catches_an_upward_import(tmp_path):
    """A copy of the package where a base module imports a method must break the layers contract."""
    shutil.copytree(REPO / "raykd", tmp_path / "raykd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    results = tmp_path / "raykd" / "results.py"
    results.write_text(results.read_text() + "\n\ndef _upward():\n    from raykd.distill import kd  # noqa\n")
    r = _lint_imports(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode != 0
    assert "raykd.results is not allowed to import raykd.distill" in r.stdout
