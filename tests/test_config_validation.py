"""A bad config fails in `raykd check`, before any Ray work: exit status 2, one sentence on stderr that
names the field (or file) and what fixes it, no traceback. Nothing here starts Ray."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

from raykd.cli import main
from raykd.config import load_config
from raykd.errors import UserError
from raykd.losses import LOSSES, PARAMS, WeightedLoss, build_one, loss_params, register_loss

BERTS = """data: {name: movie_reviews}
teacher: {name: minilm-l6}
students: [{name: bert, args: {num_layers: 3, hidden_size: 64, num_heads: 2}}]
"""


def check(tmp_path: Path, text: str | bytes, *args: str, capsys) -> str:
    """Run `raykd check` on a config; assert exit 2 and one traceback-free line; return that line."""
    p = tmp_path / "cfg.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc = main(["check", str(p), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("raykd: error: ")
    return err.strip()


# ---- loss entries -----------------------------------------------------------------------------

@pytest.mark.parametrize("losses, needles", [
    ("{name: kd, temprature: 4}", ["losses.0.temprature: unknown parameter of loss 'kd'", "did you mean 'temperature'"]),
    ("{name: ce, weigth: 1}", ["losses.0.weigth: unknown parameter of loss 'ce'", "did you mean 'weight'"]),
    ("{name: wr_triple, window: 2}", ["losses.0.window", "greater than or equal to 3"]),
    ("{name: wr_triple, window: -5}", ["losses.0.window", "greater than or equal to 3"]),
    ("{name: wr_triple, window: 3.5}", ["losses.0.window", "integer"]),
    ("{name: wr_pair, form: cosine_kll}", ["losses.0.form", "'cosine_kl' or 'distance'"]),
    ("{name: ltr_triple, criterion: l3}", ["losses.0.criterion", "'mse' or 'huber'"]),
    ("{name: kd, temperature: .nan}", ["losses.0.temperature", "finite number"]),
    ("{name: kd, temperature: 0}", ["losses.0.temperature", "greater than 0"]),
    ("{name: kd, weight: .inf}", ["losses.0.weight", "finite number"]),
    ("{name: ltr_pair, layer_map: [[0, 0]]}", ["losses.0.layer_map", "at least 2 matched layers"]),
    ("{name: hidden_mse, layer_map: [[0, -1]]}", ["losses.0.layer_map.0.1", "greater than or equal to 0"]),
    ("{name: label_smoothing, epsilon: 1.5}", ["losses.0.epsilon", "less than 1"]),
])
def test_bad_loss_entry(tmp_path, capsys, losses, needles):
    err = check(tmp_path, f"method: kd\nlosses: [{losses}]\n", capsys=capsys)
    for n in needles:
        assert n in err


def test_bad_loss_parameter_through_set(tmp_path, capsys):
    err = check(tmp_path, "method: kd\nlosses: [{name: kd, temperature: 4}]\n", "--set", "losses.0.temprature=2", capsys=capsys)
    assert "losses.0.temprature: unknown parameter of loss 'kd'; did you mean 'temperature'?" in err


def test_bad_loss_entry_in_dynabert_sections(tmp_path, capsys):
    err = check(tmp_path, "method: dynabert\nlosses: [{name: wr_pair, form: cosine_kll}]\n", capsys=capsys)
    assert "losses.0.form" in err
    err = check(tmp_path, "method: dynabert\nlosses: [{name: kd, temprature: 1}]\n", capsys=capsys)
    assert "losses.0.temprature: unknown parameter of loss 'kd'; did you mean 'temperature'?" in err
    err = check(tmp_path, "method: dynabert\nlosses: [{name: hidden_mse, layer_map: [[0, 0]]}]\n", capsys=capsys)
    assert "losses.0.layer_map" in err and "remove it" in err


def test_runtime_loss_construction_uses_the_same_parameter_models():
    with pytest.raises(UserError, match=r"losses\.0\.window: Input should be greater than or equal to 3"):
        WeightedLoss([{"name": "wr_triple", "window": 2}])
    with pytest.raises(UserError, match=r"losses\.1\.weight: Input should be a finite number"):
        WeightedLoss([{"name": "ce"}, {"name": "kd", "weight": float("nan")}])
    with pytest.raises(UserError, match=r"wr_pair\.temprature: unknown parameter of loss 'wr_pair'; did you mean 'temperature'"):
        build_one("wr_pair", {"temprature": 1.0}, field="wr_pair")
    # values are coerced by the model and defaults come from it: "2" is the float 2.0
    kd = build_one("kd", {"temperature": "2"})
    assert kd.params == {"temperature": 2.0}
    assert build_one("wr_triple", {}).window == 21


def test_every_builtin_loss_declares_a_parameter_model_matching_its_signature():
    import inspect

    builtin = [n for n in LOSSES if LOSSES.get(n).__module__.startswith("raykd.losses")]
    assert len(builtin) >= 12
    for name in builtin:
        assert name in PARAMS, f"loss {name!r} has no registered parameter model"
        obj = LOSSES.get(name)
        is_module = inspect.isclass(obj) and issubclass(obj, nn.Module)
        taken = list(inspect.signature(obj).parameters)[1 if is_module else 3:]
        assert set(PARAMS[name].model_fields) == set(taken), name


# ---- user-registered losses: parameter model from the signature -----------------------------

@register_loss("test_cv_scaled_l1")
def scaled_l1(student_out, teacher_out, batch, scale: float = 1.0, reduce: Literal["mean", "sum"] = "mean"):
    d = (student_out["logits"] - teacher_out["logits"]).abs()
    return scale * (d.mean() if reduce == "mean" else d.sum())


@register_loss("test_cv_open")
def open_loss(student_out, teacher_out, batch, scale: float = 1.0, **kwargs):
    return scale * student_out["logits"].sum() * 0


@register_loss("test_cv_module")
class ModuleLoss(nn.Module):
    def __init__(self, context: dict, size: int, gain: float = 1.0):
        super().__init__()
        self.lin = nn.Linear(size, size)
        self.gain = gain

    def forward(self, student_out, teacher_out, batch):
        return self.gain * self.lin(student_out["logits"]).sum()


@pytest.mark.parametrize("losses, needles", [
    ("{name: test_cv_scaled_l1, scale: abc}", ["losses.0.scale", "valid number"]),
    ("{name: test_cv_scaled_l1, scale: .inf}", ["losses.0.scale", "finite number"]),
    ("{name: test_cv_scaled_l1, scale: true}", ["losses.0.scale", "expected a number"]),
    ("{name: test_cv_scaled_l1, scael: 2}", ["losses.0.scael: unknown parameter of loss 'test_cv_scaled_l1'", "did you mean 'scale'"]),
    ("{name: test_cv_scaled_l1, reduce: max}", ["losses.0.reduce", "'mean' or 'sum'"]),
    ("{name: test_cv_open, scale: x}", ["losses.0.scale", "valid number"]),
    ("{name: test_cv_module}", ["losses.0.size: required"]),
    ("{name: test_cv_module, size: 4, context: {}}", ["losses.0.context: unknown parameter"]),
])
def test_user_loss_parameters_are_validated_from_its_signature(tmp_path, capsys, losses, needles):
    err = check(tmp_path, f"method: kd\nlosses: [{losses}]\n", capsys=capsys)
    for n in needles:
        assert n in err


def test_user_loss_with_valid_parameters_runs(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("method: kd\nlosses: [{name: test_cv_scaled_l1, scale: 3}, {name: test_cv_open, anything: [1, 2]},"
                 " {name: test_cv_module, size: 2}]\n")
    cfg = load_config(p)
    assert cfg.losses[1].params == {"anything": [1, 2]}
    assert loss_params("test_cv_open").model_config["extra"] == "allow"
    s, t = {"logits": torch.ones(2, 2)}, {"logits": torch.zeros(2, 2)}
    total, logs = WeightedLoss([cfg.losses[0].as_dict(), cfg.losses[1].as_dict()])(s, t, {})
    assert float(total) == pytest.approx(3.0)
    assert isinstance(WeightedLoss([cfg.losses[2].as_dict()]).parts[0], ModuleLoss)


# ---- numbers: non-finite values and booleans are refused in every config model ---------------

@pytest.mark.parametrize("text, needle", [
    ("method: kd\ntrain: {lr: .inf}\n", "train.lr: Input should be a finite number"),
    ("method: kd\ntrain: {lr: .nan}\n", "train.lr: Input should be a finite number"),
    ("method: kd\ntrain: {epochs: true}\n", "train.epochs: expected a number, got true"),
    ("method: kd\nseed: false\n", "seed: expected a number, got false"),
    ("method: kd\nteacher: {name: cnn, train: {lr: -.inf}}\n", "teacher.train.lr"),
    ("method: kd\nmetric: {a: .nan}\n", "metric.a"),
    ("method: kd\ndata: {name: mnist, train_subset: true}\n", "data.train_subset: expected a number"),
    ("method: dataset_distill\ndataset_distill: {outer_lr: .inf}\n", "dataset_distill.outer_lr: Input should be a finite number"),
    ("method: dataset_distill\ndataset_distill: {outer_betas: [0.5, .nan]}\n", "dataset_distill.outer_betas"),
    ("method: dataset_distill\ndataset_distill: {steps: true}\n", "dataset_distill.steps: expected a number"),
    ("method: self_distill\nself_distill: {generations: true}\n", "self_distill.generations: expected a number"),
    ("method: self_distill\nself_distill: {sd_temperature: .inf}\n", "self_distill.sd_temperature"),
    ("method: dynabert\ndynabert: {widths: [0.5, true]}\n", "dynabert.widths: expected a number"),
    ("method: dpd\ndpd: {alpha: .nan}\n", "dpd.alpha: Input should be a finite number"),
    ("method: dpd\ndpd: {seeds: [0, true]}\n", "dpd.seeds: expected a number"),
])
def test_non_finite_numbers_and_booleans_are_refused(tmp_path, capsys, text, needle):
    assert needle in check(tmp_path, text, capsys=capsys)


def test_booleans_stay_booleans(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("method: kd\nkd: {allow_larger_student: true}\nengine: {use_gpu: false, teacher_cache: true}\n")
    cfg = load_config(p)
    assert cfg.kd.allow_larger_student is True and cfg.engine.use_gpu is False


# ---- layer maps against the depths the config states -----------------------------------------

@pytest.mark.parametrize("loss, needles", [
    ("{name: hidden_mse, layer_map: [[0, 0], [99, 1]]}", ["losses.0.layer_map: pair [99, 1] names teacher layer 99",
                                                          "hidden states 0..6"]),
    ("{name: wr_pair, layer_map: [[0, 0], [2, 9]]}", ["losses.0.layer_map: pair [2, 9] names student layer 9",
                                                      "students.0", "hidden states 0..3"]),
    ("{name: ltr_triple, layer_map: [[0, 0], [2, 1], [99, 3]]}", ["losses.0.layer_map", "teacher layer 99"]),
    ("{name: attention_kl, layer_map: [[0, 1]]}", ["losses.0.layer_map", "attention maps 1..6"]),
])
def test_layer_map_out_of_range(tmp_path, capsys, loss, needles):
    err = check(tmp_path, f"method: kd\n{BERTS}losses: [{loss}]\n", capsys=capsys)
    for n in needles:
        assert n in err


def test_layer_map_in_range_is_accepted(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text(f"method: kd\n{BERTS}losses: [{{name: ltr_triple, layer_map: [[0, 0], [2, 1], [4, 2], [6, 3]]}}]\n")
    load_config(p)


# ---- model arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("text, needles", [
    ("method: kd\nstudents: [{name: cnn, args: {widthz: [4, 8]}}]\n",
     ["students.0.args.widthz: unknown argument of model 'cnn'", "did you mean 'widths'"]),
    ("method: kd\nteacher: {name: cnn, args: {hiden: 8}}\n", ["teacher.args.hiden", "did you mean 'hidden'"]),
    ("method: kd\nstudents: [{name: cnn, args: {widths: []}}]\n", ["students.0.args: model 'cnn' refuses these arguments",
                                                                   "widths must be a non-empty list"]),
    ("method: kd\nstudents: [{name: cnn, args: {widths: [4, 8], pool: max}}]\n", ["students.0.args", "pool must be"]),
    ("method: kd\nstudents: [{name: cnn, args: {hidden: lots}}]\n", ["students.0.args.hidden", "valid integer"]),
    ("method: kd\nstudents: [{name: cnn, args: {num_classes: 3}}]\n", ["students.0.args.num_classes", "remove it"]),
    (f"method: kd\n{BERTS.replace('num_heads: 2', 'num_heads: 3')}", ["students.0.args", "not divisible"]),
    ("method: self_distill\nstudent: {name: cnn, args: {widthz: [4]}}\n",
     ["student.args.widthz", "did you mean 'widths'"]),
    ("method: dataset_distill\nstudent: {name: cnn, args: {widthz: [4]}}\n",
     ["student.args.widthz", "did you mean 'widths'"]),
    ("method: dynabert\nteacher: {name: bert, args: {num_layer: 4}}\n",
     ["teacher.args.num_layer", "did you mean 'num_layers'"]),
])
def test_bad_model_arguments(tmp_path, capsys, text, needles):
    err = check(tmp_path, text, capsys=capsys)
    for n in needles:
        assert n in err


# ---- sweep spaces ---------------------------------------------------------------------------

@pytest.mark.parametrize("space, needles", [
    ("train.epoch: {grid: [1, 2]}", ["sweep.space.train.epoch: no such config key", "did you mean 'train.epochs'"]),
    ("trian.lr: {grid: [0.1]}", ["sweep.space.trian.lr", "did you mean 'train'"]),
    ("student.args.widthz: {grid: [[2, 4]]}", ["sweep.space.student.args.widthz", "did you mean 'student.args.widths'"]),
    ("losses.0.temprature: {grid: [2]}", ["sweep.space.losses.0.temprature", "did you mean 'losses.0.temperature'"]),
    ("losses.5.temperature: {grid: [2]}", ["sweep.space.losses.5.temperature", "losses has 2 entries"]),
    ("train.lr: {loguniform: [0, 1]}", ["sweep.space.train.lr", "low > 0"]),
    ("train.lr: {uniform: [1]}", ["sweep.space.train.lr", "[low, high]"]),
    ("train.lr: {grid: []}", ["sweep.space.train.lr", "non-empty list"]),
    ("train.lr: {between: [1, 2]}", ["sweep.space.train.lr", "expected one of"]),
])
def test_bad_sweep_space(tmp_path, capsys, space, needles):
    err = check(tmp_path, f"method: kd\nsweep: {{space: {{{space}}}}}\n", capsys=capsys)
    for n in needles:
        assert n in err


def test_section_sweep_space_keys_are_checked(tmp_path, capsys):
    err = check(tmp_path, "method: dataset_distill\nsweep: {space: {dataset_distill.num_sample: {grid: [2, 5]}}}\n",
                capsys=capsys)
    assert "did you mean 'dataset_distill.num_samples'" in err


def test_good_sweep_spaces_pass(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("method: kd\nsweep: {space: {train.lr: {loguniform: [1e-4, 1e-2]}, student: {grid: [{name: lenet5}]}, "
                 "student.args.hidden: {grid: [8, 16]}, losses.0.temperature: {choice: [2, 4]}, "
                 "engine.teacher_cache: {grid: [true, false]}}}\n")
    load_config(p)


# ---- files named by the config ---------------------------------------------------------------

def test_missing_teacher_checkpoint(tmp_path, capsys):
    err = check(tmp_path, f"method: kd\nteacher: {{name: cnn, checkpoint: {tmp_path}/nope.safetensors}}\n", capsys=capsys)
    assert "teacher.checkpoint: no weights at" in err and "remove teacher.checkpoint" in err
    err = check(tmp_path, f"method: kd\nteacher: {{name: cnn, checkpoint: {tmp_path}}}\n", capsys=capsys)
    assert "teacher.checkpoint" in err  # a directory without model.safetensors


def test_existing_teacher_checkpoint_is_accepted(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    p = tmp_path / "cfg.yaml"
    for ckpt in (tmp_path, tmp_path / "model.safetensors"):
        p.write_text(f"method: kd\nteacher: {{name: cnn, checkpoint: {ckpt}}}\n")
        load_config(p)


def test_missing_pretrained_path(tmp_path, capsys):
    err = check(tmp_path, "method: dataset_distill\ndataset_distill: {init: pretrained, pretrained_path: nope.safetensors}\n",
                capsys=capsys)
    assert "pretrained_path: no such file 'nope.safetensors'" in err


@pytest.mark.parametrize("text, needle", [
    ("method: kd\ndata: {name: user}\n", "data.path"),
    ("method: self_distill\ndata: {name: user}\n", "data.path"),
    ("method: dynabert\ndata: {name: user}\n", "data.path"),
    ("method: dataset_distill\ndata: {name: user}\n", "data.path"),
])
def test_user_dataset_without_path(tmp_path, capsys, text, needle):
    assert needle in check(tmp_path, text, capsys=capsys)


# ---- the config file itself ------------------------------------------------------------------

def test_config_is_a_directory(tmp_path, capsys):
    rc = main(["check", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "is a directory; give a YAML config file" in err and len(err.strip().splitlines()) == 1


def test_config_is_not_utf8(tmp_path, capsys):
    err = check(tmp_path, b"method: kd\nname: caf\xe9\n", capsys=capsys)
    assert "cfg.yaml: not UTF-8 text (byte 0xe9 at offset 20)" in err and "saved as UTF-8" in err


def test_config_with_byte_order_mark(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_bytes(b"\xef\xbb\xbfmethod: kd\nname: bom\n")
    assert load_config(p).name == "bom"


def test_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 600
    t0 = time.perf_counter()
    err = check(tmp_path, text, capsys=capsys)
    assert time.perf_counter() - t0 < 5
    assert "cfg.yaml: its aliases (*name) expand to" in err and "write the values out" in err


def test_recursive_alias_is_refused(tmp_path, capsys):
    assert "an alias refers to a node that contains it" in check(tmp_path, "a: &a [1, *a]\n", capsys=capsys)


def test_alias_bomb_in_override_is_refused(tmp_path, capsys):
    value = "[&a [1,1,1,1,1,1,1,1,1,1], &b [" + ",".join(["*a"] * 10) + "], &c [" + ",".join(["*b"] * 10) + \
            "], &d [" + ",".join(["*c"] * 10) + "], [" + ",".join(["*d"] * 10) + "]]"
    assert "expand to" in check(tmp_path, "method: kd\n", "--set", f"name={value}", capsys=capsys)


def test_small_aliases_still_work(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("method: kd\ntrain: &t {epochs: 1, lr: 0.01}\nteacher: {name: cnn, train: *t}\n")
    cfg = load_config(p)
    assert cfg.teacher.train.lr == cfg.train.lr == 0.01


def test_engine_auto_resolves_from_the_machine_and_keeps_explicit_values(monkeypatch):
    """engine.num_workers / cpus_per_worker auto: one worker with all of a node's CPUs as threads (two
    workers on the same cores were slower than one); one worker with one CPU per concurrent run."""
    import raykd.config as C
    from raykd.config import EngineConfig

    monkeypatch.setattr(C, "cluster_shape", lambda: ([8.0], 0.0))
    e = EngineConfig()
    assert (e.num_workers, e.cpus_per_worker) == ("auto", "auto")
    r = e.resolved()
    assert (r.num_workers, r.cpus_per_worker) == (1, 8.0)
    r = e.resolved(concurrent=True)
    assert (r.num_workers, r.cpus_per_worker) == (1, 1.0)
    r = EngineConfig(num_workers=2).resolved()
    assert (r.num_workers, r.cpus_per_worker) == (2, 4.0)  # the node's CPUs shared by its workers
    assert EngineConfig(num_workers=3, cpus_per_worker=0.5).resolved() == EngineConfig(num_workers=3, cpus_per_worker=0.5)
    monkeypatch.setattr(C, "cluster_shape", lambda: ([16.0, 16.0, 4.0], 0.0))
    r = EngineConfig().resolved()
    assert (r.num_workers, r.cpus_per_worker) == (3, 4.0)  # one per node, as many threads as the smallest has
    monkeypatch.setattr(C, "cluster_shape", lambda: ([16.0, 16.0], 4.0))
    r = EngineConfig().resolved()
    assert (r.num_workers, r.cpus_per_worker) == (4, 8.0)  # one per GPU
    r = EngineConfig(teacher_placement="actor_pool", teacher_actors=2, teacher_cpus=1.0).resolved()
    assert r.cpus_per_worker == 7.0  # room left on the node for the teacher actors
    from pydantic import ValidationError

    for bad in ({"num_workers": 0}, {"num_workers": -1}, {"cpus_per_worker": 0}, {"cpus_per_worker": "many"}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            EngineConfig(**bad)


def test_one_cpu_worker_runs_without_the_torch_backend():
    """DDP (several workers) and GPUs get TorchTrainer; one CPU worker Ray Train's generic trainer (no
    process group to set up, and a controller that does not import torch)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from raykd.config import EngineConfig
    from raykd.engine.trainer import trainer_class

    assert trainer_class(EngineConfig(num_workers=1, cpus_per_worker=2), use_gpu=False) is DataParallelTrainer
    assert trainer_class(EngineConfig(num_workers=2, cpus_per_worker=1), use_gpu=False) is TorchTrainer
    assert trainer_class(EngineConfig(num_workers=1, cpus_per_worker=2), use_gpu=True) is TorchTrainer


def test_verbose_switches_rays_own_log_level(monkeypatch):
    from raykd import runtime

    monkeypatch.delenv("RAYKD_VERBOSE", raising=False)
    assert runtime.ray_log_level() == "WARNING"
    monkeypatch.setenv("RAYKD_VERBOSE", "1")
    assert runtime.ray_log_level() == "INFO"
