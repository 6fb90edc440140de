"""Shared fixtures. Ray is started once per test session (``ray_session``): ``ray.init()`` plus a
first ``TorchTrainer.fit()`` cost ~40 s here, so tests share one runtime."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from raykd.runtime import init_ray

    init_ray(num_cpus=2)  # as a run starts it: isolated, loopback only, dashboard on 127.0.0.1
    yield ray
    ray.shutdown()


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    """An empty RAYKD_HOME (for tests of the cache itself). Most tests keep the real cache so the
    datasets are unpacked once per machine."""
    monkeypatch.setenv("RAYKD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
