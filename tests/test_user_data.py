"""Your own data: evaluated on rows it was not trained on, one label mapping per run, its own
normalisation, and bad files refused on the driver with one sentence (exit 2) before any Ray work."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raykd.cli import main
from raykd.data.prepare import image_stats, prepare
from raykd.errors import UserError

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _text_csv(path: Path, labels: list, texts: list | None = None) -> Path:
    texts = texts or [f"sentence number {i}" for i in range(len(labels))]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def _user(path: Path, **kw) -> dict:
    return {"name": "user", "path": str(path), **kw}


# ----------------------------------------------------------------------------------------------
# Hold-out and label mapping
# ----------------------------------------------------------------------------------------------

def test_without_test_path_a_stratified_holdout_never_overlaps_training(tmp_path):
    labels = ["neg"] * 50 + ["neu"] * 30 + ["pos"] * 20
    texts = [f"text {i}" for i in range(100)]
    p = prepare(_user(_text_csv(tmp_path / "d.csv", labels, texts)))
    train, test = set(p.train["text"]), set(p.test["text"])
    assert not train & test and len(train | test) == 100
    assert len(test) == 20  # 0.2 of every class: 10 + 6 + 4
    assert np.bincount(p.test["label"]).tolist() == [10, 6, 4]
    assert p.labels.names == ("neg", "neu", "pos")
    assert p.eval_split.startswith("held-out 0.2 of ") and "seed 0" in p.eval_split
    # seeded: the same split in every process; another seed or fraction gives another split
    again = prepare(_user(tmp_path / "d.csv", split_seed=0, test_subset=None))
    assert set(again.test["text"]) == test
    other = prepare(_user(tmp_path / "d.csv", split_seed=1))
    assert set(other.test["text"]) != test
    assert len(prepare(_user(tmp_path / "d.csv", test_fraction=0.5)).test["label"]) == 50


def test_one_label_mapping_from_the_training_file_for_every_split(tmp_path):
    train = _text_csv(tmp_path / "train.csv", ["neg", "neu", "pos"] * 10)
    test = _text_csv(tmp_path / "test.csv", ["pos", "neg"] * 5)  # no "neu": per-file mapping made pos 1 here
    p = prepare(_user(train, test_path=str(test)))
    assert p.labels.names == ("neg", "neu", "pos")
    assert p.test["label"].tolist() == [2, 0] * 5
    assert p.eval_split == f"test_path {test}"


def test_a_test_label_unseen_in_training_is_refused_by_name(tmp_path):
    train = _text_csv(tmp_path / "train.csv", ["neg", "pos"] * 10)
    test = _text_csv(tmp_path / "test.csv", ["pos", "neutral", "neg"])
    with pytest.raises(UserError, match=r"row 2 has the label 'neutral', which no training row has"):
        prepare(_user(train, test_path=str(test)))


def test_integer_labels_are_class_ids(tmp_path):
    p = prepare(_user(_text_csv(tmp_path / "d.csv", [0, 1, 2, 4] * 10)))
    assert p.num_classes == 5 and p.labels.names == ("0", "1", "2", "3", "4")
    test = _text_csv(tmp_path / "t.csv", [0, 7])
    with pytest.raises(UserError, match="row 2 has the label 7, which is not a class of the training data"):
        prepare(_user(tmp_path / "d.csv", test_path=str(test)))


def test_hf_classlabel_names_are_kept(tmp_path):
    import pyarrow as pa

    hf = tmp_path / "hf"
    hf.mkdir()
    table = pa.table({"text": [f"t{i}" for i in range(20)], "label": [0, 1] * 10})
    with pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (hf / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (hf / "dataset_info.json").write_text(json.dumps(
        {"features": {"text": {"dtype": "string", "_type": "Value"}, "label": {"names": ["bad", "good"], "_type": "ClassLabel"}}}))
    p = prepare(_user(hf))
    assert p.labels.names == ("bad", "good")


def test_idx_directory_uses_its_own_t10k_split(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 8, 8)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 4)
    p = prepare(_user(tmp_path))
    assert len(p.train["label"]) == 40 and len(p.test["label"]) == 10
    assert p.eval_split.endswith("t10k files")


# ----------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------

def test_images_are_normalised_with_their_own_training_statistics(tmp_path):
    rng = np.random.default_rng(0)
    bright = rng.integers(150, 256, (40, 3 * 4 * 4))
    bright[:, :16] = 10  # channel 0 dark, channels 1-2 bright
    df = pd.DataFrame(bright, columns=[f"p{i}" for i in range(48)])
    df["label"] = [0, 1] * 20
    df.to_csv(tmp_path / "img.csv", index=False)
    p = prepare(_user(tmp_path / "img.csv", image_shape=[3, 4, 4]))
    mean, std = p.norm["mean"], p.norm["std"]
    assert mean[0] == pytest.approx(10 / 255)
    assert mean[1] > 0.7 and mean[2] > 0.7
    # computed on the training rows only, and the training batch comes out standardised per channel
    x = np.asarray(p.train["x"], np.float64) / 255.0
    assert mean[1] == pytest.approx(x[:, 1].mean()) and std[2] == pytest.approx(x[:, 2].std())
    from raykd.engine.task import ClassifyTask, TaskSpec

    method = ClassifyTask(TaskSpec(dataset=_user(tmp_path / "img.csv", image_shape=[3, 4, 4]), student={"name": "cnn"}))
    batch = method.batch(method.load_split("train"), np.arange(len(p.train["label"])))["x"]
    assert batch[:, 1:].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert batch[:, 1:].std().item() == pytest.approx(1.0, abs=0.05)


def test_registered_image_datasets_get_their_own_statistics():
    mnist = prepare({"name": "mnist", "train_subset": 5000})
    assert mnist.norm["mean"][0] == pytest.approx(0.1307, abs=0.005)
    try:
        fashion = prepare({"name": "fashion_mnist", "train_subset": 5000})
    except UserError:
        pytest.skip("Fashion-MNIST files are not installed here")
    assert fashion.norm["mean"][0] == pytest.approx(0.286, abs=0.01)
    assert image_stats(np.zeros((2, 1, 2, 2), np.uint8))["std"][0] > 0  # no division by zero
    x = np.random.default_rng(0).integers(0, 256, size=(20000, 3, 8, 8), dtype=np.uint8)  # sums past int32
    f = x.astype(np.float64) / 255.0
    stats = image_stats(x, chunk=7000)
    np.testing.assert_allclose(stats["mean"], f.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["std"], f.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Bad files: `raykd check` refuses each with one sentence and exit 2
# ----------------------------------------------------------------------------------------------

def _write_idx(path: Path, arr: np.ndarray, cut: int | None = None) -> None:
    blob = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(blob[:cut] if cut else blob)


def _pixels_csv(path: Path, rows: list[list], header: list[str] | None = None) -> Path:
    header = header or [f"p{i}" for i in range(4)] + ["label"]
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _put(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _good_pixel_rows(n: int = 10) -> list[list]:
    return [[10, 20, 30, 40, i % 2] for i in range(n)]


BAD_FILES = {
    "empty label cell": (lambda d: _text_csv(d / "x.csv", ["a", None, "b", "a"]), {}, "row 2 has no label"),
    "NaN label": (lambda d: _text_csv(d / "x.csv", [0.0, float("nan"), 1.0, 1.0]), {}, "row 2 has no label"),
    "empty file": (lambda d: _put(d / "x.csv", ""), {}, "the file is empty"),
    "header only": (lambda d: _put(d / "x.csv", "text,label\n"), {"num_classes": 3},
                    "has a header but no rows"),
    "ragged rows": (lambda d: _put(d / "x.csv", "text,label\na,0\nb,1,extra\nc,0\n"), {},
                    "expected 2 fields in line 3, saw 3"),
    "non-numeric pixels": (lambda d: _pixels_csv(d / "x.csv", _good_pixel_rows(3) + [[1, "dark", 3, 4, 0]]), {},
                           "column 'p1' is not numeric (row 4 holds 'dark')"),
    "NaN pixel": (lambda d: _pixels_csv(d / "x.csv", _good_pixel_rows(3) + [[1, "", 3, 4, 0]]), {},
                  "row 4, column 'p1' holds nan"),
    "fractional pixel": (lambda d: _pixels_csv(d / "x.csv", _good_pixel_rows(3) + [[1, 2.5, 3, 4, 0]]), {},
                         "row 4, column 'p1' holds 2.5; pixel values must be whole numbers"),
    "pixel out of range": (lambda d: _pixels_csv(d / "x.csv", _good_pixel_rows(3) + [[1, 300, 3, 4, 0]]), {},
                           "must lie in 0..255"),
    "negative label": (lambda d: _text_csv(d / "x.csv", [0, 1, -1, 1]), {}, "row 3 has the label -1"),
    "huge label": (lambda d: _text_csv(d / "x.csv", [0, 1, 1_000_000_001, 1]), {},
                   "would make a 1,000,000,002-way classifier"),
    "fractional label": (lambda d: _text_csv(d / "x.csv", [0, 1, 0.5, 1]), {}, "row 3 has the label 0.5"),
    "NaN text": (lambda d: _text_csv(d / "x.csv", [0, 1, 0, 1], ["a", "b", None, "d"]), {}, "row 3 has no text"),
    "one class only": (lambda d: _text_csv(d / "x.csv", ["a"] * 6), {}, "needs at least 2 classes"),
    "too few rows to hold out": (lambda d: _text_csv(d / "x.csv", ["a", "b"]), {}, "too few to hold out"),
    "not UTF-8": (lambda d: _put(d / "x.csv", b"text,label\ncaf\xe9,0\nb,1\n"), {},
                  "not UTF-8 text"),
    "truncated IDX header": (lambda d: _idx_dir(d, cut=10), {}, "the IDX header is cut short"),
    "truncated IDX data": (lambda d: _idx_dir(d, cut=200), {}, "file holds"),
    "not parquet": (lambda d: _put(d / "x.parquet", b"PAR1 nonsense"), {},
                    "cannot read it as parquet"),
    "wrong pixel count": (lambda d: _pixels_csv(d / "x.csv", _good_pixel_rows()), {"image_shape": [1, 3, 3]},
                          "4 pixel columns do not fit data.image_shape [1, 3, 3]"),
}


def _idx_dir(d: Path, cut: int) -> Path:
    _write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((4, 8, 8)), cut=cut)
    _write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(4) % 2)
    return d


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_user_data_is_refused_by_raykd_check(tmp_path, capsys, case):
    make, extra, needle = BAD_FILES[case]
    d = tmp_path / "data"
    d.mkdir()
    path = make(d)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"method": "kd", "data": {"name": "user", "path": str(path), **extra},
                               "teacher": {"name": "cnn", "args": {"widths": [4, 8], "hidden": 16}},
                               "students": [{"name": "cnn", "args": {"widths": [2, 4], "hidden": 8}}]}))
    rc = main(["check", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err
    assert str(path) in err  # names the file
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_raykd_check_reports_the_evaluation_split(tmp_path, capsys):
    _text_csv(tmp_path / "d.csv", ["neg", "pos"] * 20)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"method": "kd", "data": {"name": "user", "path": str(tmp_path / "d.csv")},
                               "teacher": {"name": "bert", "args": {"num_layers": 2, "hidden_size": 64}},
                               "students": [{"name": "bert", "args": {"num_layers": 1, "hidden_size": 64}}]}))
    assert main(["check", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "32 training rows, 2 classes (neg, pos); evaluated on held-out 0.2 of" in out


def test_data_path_needs_name_user(tmp_path, capsys):
    _text_csv(tmp_path / "d.csv", ["neg", "pos"] * 5)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"method": "kd", "data": {"name": "mnist", "path": str(tmp_path / "d.csv")}}))
    assert main(["check", str(cfg)]) == 2
    assert "set data.name to 'user'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Saved students carry the run's label names (and, for images, the normalisation)
# ----------------------------------------------------------------------------------------------

def test_saved_students_keep_the_users_label_names(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from raykd.engine.task import ClassifyTask, TaskSpec
    from raykd.distill.kd import save_student

    text = _text_csv(tmp_path / "t.csv", ["neg", "neu", "pos"] * 10)
    method = ClassifyTask(TaskSpec(dataset=_user(text), student={"name": "bert", "args": {"num_layers": 1, "hidden_size": 32}}))
    save_student(method.build_student(), tmp_path / "bert", method)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert")
    assert loaded.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert loaded.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    assert (tmp_path / "bert" / "tokenizer.json").exists()

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.integers(0, 256, (30, 16)), columns=[f"p{i}" for i in range(16)])
    df["label"] = [WORDS[i % 3] for i in range(30)]
    df.to_csv(tmp_path / "img.csv", index=False)
    method = ClassifyTask(TaskSpec(dataset=_user(tmp_path / "img.csv"), student={"name": "cnn", "args": {"widths": [2, 4], "hidden": 8}}))
    save_student(method.build_student(), tmp_path / "cnn", method)
    meta = json.loads((tmp_path / "cnn" / "labels.json").read_text())
    assert meta["id2label"] == {"0": "one", "1": "two", "2": "zero"}
    assert meta["normalisation"] == method.data.norm


@pytest.mark.ray
def test_kd_on_a_users_csv_holds_out_rows_and_keeps_label_names(ray_session, tmp_path):
    """End to end on Ray Train: MNIST images written as a user's CSV with word labels and no test file."""
    from raykd import data
    from raykd.config import parse_config
    from raykd.api import run
    from raykd.results import read_results

    mnist = data.load("mnist", "train", subset=2500, seed=3)
    df = pd.DataFrame(np.asarray(mnist["x"]).reshape(len(mnist["label"]), -1), columns=[f"px{i}" for i in range(784)])
    df["digit"] = [WORDS[i] for i in mnist["label"]]
    df.to_csv(tmp_path / "digits.csv", index=False)
    cfg = parse_config({
        "name": "user-csv", "method": "kd", "output_dir": str(tmp_path / "run"),
        "data": {"name": "user", "path": str(tmp_path / "digits.csv"), "label_column": "digit"},
        "teacher": {"name": "cnn", "args": {"widths": [8, 16], "hidden": 32},
                    "train": {"epochs": 3, "batch_size": 32, "lr": 0.01}},
        "students": [{"name": "cnn", "args": {"widths": [4, 8], "hidden": 16}, "label": "tiny"}],
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01},
        "engine": {"num_workers": 1},
    })
    df_out = run(cfg, check_data=False).table
    rows = {r["method"]: r for r in df_out.to_dict("records")}
    assert set(rows) == {"teacher", "kd"}
    for r in rows.values():
        assert r["eval_split"].startswith("held-out 0.2 of ") and "digits.csv" in r["eval_split"]
    assert rows["teacher"]["accuracy"] > 0.8 and rows["kd"]["accuracy"] > 0.6  # 10 classes: chance is 0.1
    out = tmp_path / "run"
    described = json.loads((out / "data.json").read_text())
    assert described["labels"] == sorted(WORDS) and described["n_test"] == 500 and described["n_train"] == 2000
    saved = json.loads((out / "students" / "kd-0" / "labels.json").read_text())
    assert saved["id2label"] == {str(i): w for i, w in enumerate(sorted(WORDS))}
    assert saved["normalisation"]["mean"][0] == pytest.approx(0.13, abs=0.01)
    assert read_results(out)["eval_split"].str.startswith("held-out").all()
