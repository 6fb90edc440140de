"""DynaBERT: sub-network views, importance rewiring, extraction, settings, and one small end-to-end run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from raykd import models as M
from raykd.config import parse_config
from raykd.distill import dynabert as DB
from raykd.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _net(seed: int = 0, layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return M.build("bert", num_layers=layers, hidden_size=64, num_heads=4, intermediate_size=128).eval()


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (6, 12), generator=g)
    mask = torch.ones(6, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[3, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "label": torch.tensor([0, 1, 0, 1, 1, 0])}


def test_kept_layers_follow_the_paper_rule():
    assert DB.kept_layers(12, 0.75) == [0, 1, 2, 4, 5, 6, 8, 9, 10]  # layers 4, 8, 12 dropped
    assert DB.kept_layers(12, 0.5) == [0, 2, 4, 6, 8, 10]
    assert DB.kept_layers(6, 0.5) == [0, 2, 4]
    assert DB.kept_layers(6, 1.0) == list(range(6))
    assert DB.depth_layer_map(6, 0.5) == [(0, 0), (1, 1), (3, 2), (5, 3)]


def test_items_name_width_depth_and_seed_when_there_are_several():
    assert DB.subnet_item(0.5, 1.0, 0, [0]) == "width0.5-depth1"
    assert DB.subnet_item(0.25, 0.75, 1, [0, 1]) == "width0.25-depth0.75-seed1"


def test_full_subnetwork_is_the_hf_model():
    net, b = _net(), _batch()
    ref = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
    out = DB.DynaBert(net).eval()(b["input_ids"], b["attention_mask"])[0]
    torch.testing.assert_close(out["logits"], ref.logits, atol=1e-5, rtol=0)
    for a, r in zip(out["hidden_states"], ref.hidden_states):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=0)


def test_rewiring_keeps_the_function_and_sorts_by_importance():
    net, b = _net(), _batch()
    before = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    head, neuron = DB.importance_scores(net, [b, _batch(2)])
    assert head.shape == (4, 4) and neuron.shape == (4, 128) and (head > 0).all()
    assert not torch.equal(torch.argsort(head, dim=1, descending=True), torch.arange(4).expand(4, 4))  # a real permutation
    DB.reorder_(net, head, neuron)
    after = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    head2, neuron2 = DB.importance_scores(net, [b, _batch(2)])
    assert (head2[:, :-1] >= head2[:, 1:] - 1e-7).all() and (neuron2[:, :-1] >= neuron2[:, 1:] - 1e-7).all()
    torch.testing.assert_close(head2.sort(dim=1, descending=True).values, head.sort(dim=1, descending=True).values)


def test_rewiring_keeps_the_important_heads_in_narrow_subnetworks():
    """The narrow sub-network of a rewired net changes the full net's loss less than the same-width
    sub-network of the original order (importance is the first-order loss change of removal)."""
    net, b = _net(seed=3), _batch()
    labels = b["label"]
    full = DB.DynaBert(net).eval()

    def loss_gap(model) -> float:
        with torch.no_grad():
            f, s = model(b["input_ids"], b["attention_mask"], ((1.0, 1.0), (0.5, 1.0)))
        return abs(float(torch.nn.functional.cross_entropy(s["logits"], labels) - torch.nn.functional.cross_entropy(f["logits"], labels)))

    plain = loss_gap(full)
    head, neuron = DB.importance_scores(net, [b])
    DB.reorder_(net, head, neuron)
    assert loss_gap(full) < plain


@pytest.mark.parametrize("width,depth", [(0.25, 0.5), (0.5, 0.75), (0.75, 1.0), (1.0, 0.5), (1.0, 1.0)])
def test_extracted_subnetwork_matches_the_view_and_reloads(tmp_path, width, depth):
    from transformers import AutoModelForSequenceClassification

    net, b = _net(), _batch()
    view = DB.DynaBert(net).eval()(b["input_ids"], b["attention_mask"], ((width, depth),))[0]
    sub = DB.extract_subnetwork(net, width, depth)
    s = DB.subnet_shape(net.config, width, depth)
    assert sub.config.num_hidden_layers == len(s.layers) and sub.config.intermediate_size == s.neurons
    logits = sub(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(logits, view["logits"], atol=1e-5, rtol=0)
    sub.save_pretrained(tmp_path)
    back = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    torch.testing.assert_close(back(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, logits,
                               atol=1e-5, rtol=0)


def test_subnetwork_params_count_only_kept_weights():
    from raykd.models.size import count_params

    net = _net()
    assert DB.subnetwork_params(net, 1.0, 1.0) == count_params(net)
    D, I, L = 64, 128, 4
    per_layer_full = 4 * (D * D + D) + 2 * D + (D * I + I) + (I * D + D) + 2 * D
    per_layer_half = 4 * (D * D // 2) + 3 * D // 2 + D + 2 * D + (D * I // 2 + I // 2) + (I // 2 * D + D) + 2 * D
    assert DB.subnetwork_params(net, 0.5, 0.5) == count_params(net) - L * per_layer_full + 2 * per_layer_half


def _arbitrary_net(seed: int = 5) -> torch.nn.Module:
    """A rewired-looking net: every weight perturbed (non-zero biases, LayerNorms off 1/0) and heads and
    neurons permuted by random importance scores, so slicing the wrong rows would show."""
    net = _net(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        DB.reorder_(net, torch.rand(4, 4), torch.rand(4, 128))
    return net


def _sentences(seed: int = 2) -> dict[str, torch.Tensor]:
    """Token ids shaped like tokenised sentences: [CLS] words [SEP] then [PAD] (id 0, masked) to the longest."""
    g = torch.Generator().manual_seed(seed)
    lengths = [16, 5, 11, 3, 16, 9, 7, 14]
    ids = torch.zeros(len(lengths), 16, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.cat([torch.tensor([101]), torch.randint(1996, 29000, (n - 2,), generator=g), torch.tensor([102])])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def _attention_ffn_params(model: torch.nn.Module) -> int:
    """Parameters of the encoder layers' attention projections and FFN (no LayerNorms)."""
    return sum(p.numel() for n, p in model.bert.encoder.named_parameters() if "LayerNorm" not in n)


@pytest.mark.parametrize("width,depth", [(0.25, 1.0), (0.25, 0.5), (0.5, 0.5), (0.5, 1.0), (0.75, 0.75), (1.0, 0.5)])
def test_exported_subnetwork_is_smaller_and_computes_the_view(width, depth):
    from transformers import BertForSequenceClassification

    from raykd.models.hf_export import PrunedBertForSequenceClassification
    from raykd.models.size import count_params

    net, b = _arbitrary_net(), _sentences()
    view = DB.DynaBert(net).eval()(b["input_ids"], b["attention_mask"], ((width, depth),))[0]["logits"]
    sub = DB.extract_subnetwork(net, width, depth)
    out = sub(**b, output_attentions=True)
    torch.testing.assert_close(out.logits, view, atol=1e-5, rtol=0)

    s = DB.subnet_shape(net.config, width, depth)
    D, I, H, dh = 64, 128, 4, 16
    assert type(sub) is (BertForSequenceClassification if s.heads == H else PrunedBertForSequenceClassification)
    assert sub.config.id2label == net.config.id2label and len(sub.bert.encoder.layer) == len(s.layers)
    assert [a.shape[1] for a in out.attentions] == [s.heads] * len(s.layers)  # eager attention, k heads each
    att = sub.bert.encoder.layer[0].attention
    assert att.self.query.weight.shape == (s.heads * dh, D) and att.output.dense.weight.shape == (D, s.heads * dh)
    assert sub.bert.encoder.layer[0].intermediate.dense.weight.shape == (s.neurons, D)

    # attention + FFN parameters scale with the kept fraction; only the output biases of W_O and W_2 do not
    k, n = s.heads * dh, s.neurons
    assert _attention_ffn_params(sub) == len(s.layers) * (4 * D * k + 3 * k + D + 2 * D * n + n + D)
    per_layer_full = _attention_ffn_params(net) / 4
    ratio = _attention_ffn_params(sub) / (len(s.layers) * per_layer_full)
    assert abs(ratio - width) <= 2 * D / per_layer_full + 1e-9, (ratio, width)
    assert DB.subnetwork_params(net, width, depth) == count_params(sub) < count_params(net)


_RELOAD = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification
batch = {k: torch.tensor(v) for k, v in json.loads(sys.argv[1]).items()}
out = {}
for path in sys.argv[2:]:
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    with torch.no_grad():
        out[path] = {"class": type(model).__name__, "logits": model(**batch).logits.tolist()}
assert not any(m == "raykd" or m.startswith("raykd.") for m in sys.modules), "raykd was imported"
print(json.dumps(out))
"""


def test_exported_subnetworks_reload_in_a_process_without_raykd(tmp_path):
    """Saved with save_pretrained, each sub-network loads with AutoModelForSequenceClassification
    (trust_remote_code) where raykd was never imported, and predicts as it did; its safetensors file
    is the full model's minus 4 bytes per removed parameter."""
    from raykd.models.size import count_params

    net, b = _arbitrary_net(), _sentences()
    net.save_pretrained(tmp_path / "full")
    full_bytes = (tmp_path / "full" / "model.safetensors").stat().st_size
    expected = {}
    for w, d in ((0.25, 0.5), (0.5, 1.0), (1.0, 0.5)):
        sub = DB.extract_subnetwork(net, w, d)
        path = tmp_path / f"w{w:g}-d{d:g}"
        sub.save_pretrained(path)
        with torch.no_grad():
            expected[str(path)] = sub(**b).logits
        size = (path / "model.safetensors").stat().st_size
        assert abs((full_bytes - size) - 4 * (count_params(net) - count_params(sub))) < 4096  # headers differ
        config = json.loads((path / "config.json").read_text())
        if w < 1.0:
            assert config["model_type"] == "raykd_pruned_bert" and (path / "hf_export.py").exists()
            assert config["auto_map"]["AutoModelForSequenceClassification"] == "hf_export.PrunedBertForSequenceClassification"
        else:
            assert config["model_type"] == "bert" and "auto_map" not in config

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    batch = json.dumps({k: v.tolist() for k, v in b.items()})
    proc = subprocess.run([sys.executable, "-c", _RELOAD, batch, *expected], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, logits in expected.items():
        assert got[path]["class"] == ("BertForSequenceClassification" if "w1-" in path else "PrunedBertForSequenceClassification")
        back = torch.tensor(got[path]["logits"])
        torch.testing.assert_close(back, logits, atol=1e-5, rtol=0)
        assert torch.equal(back.argmax(-1), logits.argmax(-1))


def test_settings_defaults_and_errors():
    cfg = parse_config({"method": "dynabert"})
    assert cfg.dynabert.widths == [0.25, 0.5, 0.75, 1.0] and cfg.dynabert.depths == [0.5, 0.75, 1.0]
    assert cfg.teacher.name == "minilm-l6" and cfg.data.name == "movie_reviews"
    assert [l.name for l in cfg.losses] == ["kd", "hidden_mse"] and DB.objective(cfg.losses) == "dynabert"
    ckd = parse_config({"method": "dynabert", "losses": [{"name": "kd", "temperature": 4.0}, {"name": "wr_pair"},
                                                         {"name": "ltr_triple"}]})
    assert DB.objective(ckd.losses) == "ckd"
    tiny = {"name": "bert", "args": {"num_layers": 2}}
    for bad, where in (({"dynabert": {"widths": [0.5]}}, "dynabert.widths"),
                       ({"dynabert": {"depths": [0.5, 1.5]}}, "dynabert.depths"),
                       ({"dynabert": {"loss": "ckd"}}, "dynabert.loss: unknown field"),  # the objective is losses:
                       ({"dynabert": {"widht": [1.0]}}, "did you mean 'widths'"),
                       ({"dynabert": {"seeds": [0, 0]}}, "dynabert.seeds"),
                       ({"data": {"name": "mnist"}}, "data.name"), ({"teacher": {"name": "cnn"}}, "teacher.name"),
                       ({"train": {"seed": 3}}, "train.seed"), ({"students": [tiny]}, "students"),
                       ({"losses": [{"name": "attention_kl"}]}, "losses.0.name"),
                       ({"losses": [{"name": "hidden_mse", "layer_map": [[0, 0]]}]}, "losses.0.layer_map"),
                       ({"teacher": tiny, "losses": [{"name": "ltr_triple"}]}, "losses.0")):  # needs 3 layers
        with pytest.raises(UserError, match=re.escape(where)):
            parse_config({"method": "dynabert", **bad})


def test_subnet_loss_uses_each_depths_layer_map():
    loss = DB.SubnetLoss([{"name": "kd", "temperature": 1.0}, {"name": "hidden_mse"}], (0.5, 1.0), 6,
                         {"student_hidden": 64, "teacher_hidden": 64})
    assert loss.teacher_needs == {"logits", "hidden_states"}
    assert loss.for_depth(0.5).parts[1].layer_map == [(0, 0), (1, 1), (3, 2), (5, 3)]
    assert loss.for_depth(1.0).parts[1].layer_map == [(i, i) for i in range(7)]


def t_params(df) -> float:
    return float(df[df["method"] == "teacher"]["params"].iloc[0])


@pytest.mark.slow
@pytest.mark.ray
def test_dynabert_end_to_end_trains_every_subnetwork(ray_session, tmp_path, monkeypatch):
    """A tiny BERT teacher, rewired and trained width/depth-adaptively on Ray Train: every
    sub-network beats chance, the smallest one moves closer to the teacher than its untrained
    (rewired) version, and the saved sub-network reloads with AutoModelForSequenceClassification to
    the accuracy recorded in the results table."""
    from transformers import AutoModelForSequenceClassification

    from raykd.engine.checkpoint import load_weights
    from raykd.engine.task import ClassifyTask, TaskSpec
    from raykd.lifecycle import execute

    cfg = parse_config({
        "method": "dynabert", "output_dir": str(tmp_path),
        "data": {"name": "movie_reviews", "max_length": 24, "train_subset": 1500, "test_subset": 500},
        "teacher": {"name": "bert", "args": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "intermediate_size": 128},
                    "train": {"epochs": 3, "batch_size": 64, "lr": 2e-3, "seed": 0}},
        "train": {"epochs": 2, "batch_size": 64, "lr": 1e-3}, "engine": {"num_workers": 2},
        "dynabert": {"widths": [0.5, 1.0], "depths": [0.5, 1.0], "importance_batches": 4}})
    df = execute(cfg, report=False).table
    subs = df[df["method"] == "dynabert-dynabert"]
    assert sorted(subs["item"]) == ["width0.5-depth0.5", "width0.5-depth1", "width1-depth0.5", "width1-depth1"]
    assert float(df[df["method"] == "teacher"]["accuracy"].iloc[0]) > 0.6
    assert (subs["accuracy"] > 0.6).all(), subs[["student", "accuracy"]]
    params = dict(zip(subs["student"], subs["params"]))
    assert params["dynabert w0.5 d0.5"] < params["dynabert w1 d0.5"] < params["dynabert w1 d1"] == t_params(df)

    # distillation worked: the smallest sub-network is closer to the teacher (mean KL of the
    # predictions on the test split) than the same sub-network cut from the rewired teacher
    task = ClassifyTask(TaskSpec(dataset=cfg.data, student={"name": "bert", "args": {}}))
    test = task.load_split("test")
    students = tmp_path / "students"
    rewired = load_weights(M.build("bert", num_classes=2, **cfg.teacher.args), students / "adaptive-seed0" / "rewired.safetensors")
    log_p_t = torch.log_softmax(task.predict_logits(rewired, test), -1)  # rewiring keeps the teacher's function
    trained = AutoModelForSequenceClassification.from_pretrained(students / "width0.5-depth0.5")

    def kl_to_teacher(model) -> float:
        log_p_s = torch.log_softmax(task.predict_logits(model, test), -1)
        return float((log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean())

    assert kl_to_teacher(trained) < kl_to_teacher(DB.extract_subnetwork(rewired, 0.5, 0.5))
    ev = task.evaluate(trained, test)
    small = float(subs[subs["student"] == "dynabert w0.5 d0.5"]["accuracy"].iloc[0])
    assert ev["correct"] / ev["count"] == pytest.approx(small, abs=1e-9)

    # a rerun after a crash between two sub-networks evaluates the saved adaptive model, never retrains
    monkeypatch.setattr(DB, "fit", lambda *a, **k: pytest.fail("the adaptive model was trained again"))
    lost = df[df["item"] != "width1-depth1"]
    lost.to_parquet(tmp_path / "results.parquet", index=False)
    lost.to_csv(tmp_path / "results.csv", index=False)
    again = execute(cfg, report=False).table
    assert sorted(again["item"]) == sorted(df["item"]) and again["item"].is_unique
    redone = again.set_index("item").loc["width1-depth1"]
    assert redone["accuracy"] == pytest.approx(float(subs[subs["item"] == "width1-depth1"]["accuracy"].iloc[0]), abs=1e-9)


def _registered_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint the Train controller has registered for ``run_dir`` (its persisted snapshot)."""
    try:
        latest = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return None
    return latest["checkpoint_dir_name"] if latest else None


@pytest.mark.slow
def test_smoke_resumes_after_the_driver_is_killed(tmp_path):
    """``raykd run configs/dynabert_smoke.yaml``, its driver killed (SIGKILL) once the adaptive Train run
    has registered the checkpoint of its first epoch; the same command again resumes the Train run from
    that checkpoint and ends with every item exactly once."""
    from raykd.results import read_results

    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(REPO / ".venv" / "bin" / "raykd"), "run", str(REPO / "configs" / "dynabert_smoke.yaml"),
           "--set", f"output_dir={tmp_path}", "--set", "train.epochs=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (runs := list((tmp_path / "ray").glob("*-adaptive-seed0"))) or not _registered_checkpoint(runs[0]):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"no registered checkpoint of the adaptive Train run (driver exit code {proc.returncode})")
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _registered_checkpoint(runs[0])
    assert json.loads((runs[0] / first / "state.json").read_text())["epoch"] == 1, "killed too late to test resume"
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    last = json.loads((runs[0] / _registered_checkpoint(runs[0]) / "state.json").read_text())["metrics"]
    assert last["epoch"] == 2 and last["resumed_after_epoch"] == 1, "the Train run started over instead of resuming"
    df = read_results(tmp_path)
    expected = ["teacher"] + [f"width{w}-depth{d}" for w in ("0.5", "1") for d in ("0.5", "1")]
    assert sorted(df["item"]) == sorted(expected) and df["run_id"].nunique() == 1
    assert set(df[df["item"] != "teacher"]["method"]) == {"dynabert-ckd"}
    assert (tmp_path / "students" / "adaptive-seed0" / "meta.json").exists()
