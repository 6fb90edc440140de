"""Self-distillation and Beta smoothing (Zhang & Sabuncu 2020): losses, EMA, metrics, the config
layout, generation wiring and resume (engine replaced by a stand-in), one small real-data run on Ray,
and a driver killed mid-run then rerun."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from driver_kill import kill_driver_then_rerun
from raykd.config import parse_config
from raykd.distill import self_distill as SD
from raykd.engine.task import build_task
from raykd.errors import UserError
from raykd.losses import WeightedLoss, build_one
from raykd.losses.smoothing import beta_targets, smoothed_targets
from raykd.metrics import ece, predictive_diversity, reliability_bins
from raykd.results import read_results

REPO = Path(__file__).resolve().parents[1]


def config(**raw):
    """A validated ``method: self_distill`` config from its sections."""
    return parse_config({"method": "self_distill", **raw})


# ---------------------------------------------------------------- Beta smoothing targets

def test_beta_targets_are_distributions_with_b_on_the_label():
    g = torch.Generator().manual_seed(0)
    n, k = 257, 7
    labels = torch.randint(0, k, (n,), generator=g)
    q = beta_targets(torch.rand(n, generator=g), labels, k, a=3.0, generator=g)
    assert q.shape == (n, k)
    assert torch.all(q >= 0) and torch.all(q <= 1)
    assert torch.allclose(q.sum(1), torch.ones(n), atol=1e-6)
    b = q.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = q.masked_fill(F.one_hot(labels, k).bool(), float("nan"))
    # every non-target class gets exactly (1 - b) / (K - 1)
    assert torch.allclose(torch.nanquantile(others, 0.0, dim=1), (1 - b) / (k - 1), atol=1e-6)
    assert torch.allclose(torch.nanquantile(others, 1.0, dim=1), (1 - b) / (k - 1), atol=1e-6)


def test_beta_targets_give_largest_b_to_most_confident_sample():
    g = torch.Generator().manual_seed(1)
    n, k = 64, 10
    conf = torch.rand(n, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    q = beta_targets(conf, labels, k, a=3.0, generator=g)
    b = q.gather(1, labels.unsqueeze(1)).squeeze(1)
    assert int(b.argmax()) == int(conf.argmax())
    assert int(b.argmin()) == int(conf.argmin())
    # b is a monotone function of the confidence rank
    assert torch.equal(torch.argsort(b), torch.argsort(conf))


def test_beta_draws_follow_beta_a_1():
    g = torch.Generator().manual_seed(2)
    n, a = 20000, 3.0
    labels = torch.zeros(n, dtype=torch.long)
    b = beta_targets(torch.rand(n, generator=g), labels, 2, a=a, generator=g)[:, 0]
    assert abs(float(b.mean()) - a / (a + 1)) < 0.01           # E[Beta(a,1)] = a / (a + 1)
    assert abs(float((b <= 0.5).float().mean()) - 0.5 ** a) < 0.01  # CDF F(x) = x^a


def test_beta_smoothing_loss_ranks_by_reference_logits():
    k = 4
    labels = torch.tensor([0, 1, 2, 3])
    ref = torch.full((4, k), -5.0)
    ref[torch.arange(4), labels] = torch.tensor([0.0, 3.0, 6.0, 9.0])  # sample 3 most confident
    student = torch.zeros(4, k, requires_grad=True)
    loss = build_one("beta_smoothing", {"a": 3.0})({"logits": student}, {"logits": ref}, {"label": labels})
    loss.backward()
    # d/dz soft-CE = p - q; with uniform p the gradient on the label is 1/K - b: most negative for largest b
    g_label = student.grad[torch.arange(4), labels]
    assert torch.equal(torch.argsort(-g_label), torch.arange(4))


# ---------------------------------------------------------------- EMA

def test_ema_decay_schedule_is_exact():
    for step in range(0, 5000, 7):
        assert SD.ema_decay(step) == min(1.0 - 1.0 / (step + 1), 0.999)
    assert SD.ema_decay(0) == 0.0 and SD.ema_decay(1) == 0.5 and SD.ema_decay(10**6) == 0.999


def test_ema_after_step_averages_iterates_then_caps_decay():
    cfg = config(student={"name": "mlp", "args": {"hidden": [3], "in_features": 2}}, data={"name": "mnist"})
    task = build_task(SD.make_task(cfg, "beta_smoothing", 0))
    assert isinstance(task, SD.BetaSmoothingTask)
    student = torch.nn.Sequential(torch.nn.Linear(2, 3))
    task.build_loss(student)
    iterates = []
    for step in range(50):
        with torch.no_grad():
            student[0].weight.fill_(float(step) ** 1.5)
        iterates.append(student[0].weight.detach().clone())
        task.after_step(student, step)
    # with decay 1 - 1/(t+1) the EMA is the plain mean of all iterates so far
    assert torch.allclose(task.ema[0].weight, torch.stack(iterates).mean(0), rtol=1e-5)
    # far along, the decay is capped at 0.999
    before = task.ema[0].weight.clone()
    with torch.no_grad():
        student[0].weight.fill_(1000.0)
    task.after_step(student, 10**6)
    assert torch.allclose(task.ema[0].weight, 0.999 * before + 0.001 * 1000.0)


# ---------------------------------------------------------------- other losses

def test_label_smoothing_eps0_equals_ce_and_targets_are_spread_over_other_classes():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(32, 5, generator=g)
    labels = torch.randint(0, 5, (32,), generator=g)
    batch, out = {"label": labels}, {"logits": logits}
    ls0 = build_one("label_smoothing", {"epsilon": 0.0})(out, None, batch)
    assert torch.allclose(ls0, F.cross_entropy(logits, labels), atol=1e-6)
    q = smoothed_targets(labels, 5, 0.9)
    assert torch.allclose(q.sum(1), torch.ones(32)) and torch.allclose(q.max(1).values, torch.full((32,), 0.9))
    assert torch.allclose(q.min(1).values, torch.full((32,), 0.1 / 4))
    ls = build_one("label_smoothing", {"epsilon": 0.1})(out, None, batch)
    ref = -(q * F.log_softmax(logits, -1)).sum(1).mean()
    assert torch.allclose(ls, ref, atol=1e-6)


def test_confidence_penalty_and_soft_ce():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(16, 6, generator=g)
    zt = torch.randn(16, 6, generator=g)
    y = torch.randint(0, 6, (16,), generator=g)
    p = F.softmax(z, -1)
    h = -(p * p.log()).sum(1).mean()
    cp = build_one("confidence_penalty", {"beta": 0.5})({"logits": z}, None, {"label": y})
    assert torch.allclose(cp, F.cross_entropy(z, y) - 0.5 * h, atol=1e-6)
    sce = build_one("soft_ce", {"temperature": 4.0})({"logits": z}, {"logits": zt}, {"label": y})
    q = F.softmax(zt / 4.0, -1)
    assert torch.allclose(sce, -(q * F.log_softmax(z, -1)).sum(1).mean(), atol=1e-6)
    # the paper's SD objective composes from the registry
    wl = WeightedLoss(SD.SelfDistillSettings().losses("self_distill"))
    total, logs = wl({"logits": z}, {"logits": zt}, {"label": y})
    assert set(logs) == {"ce", "soft_ce"}
    assert torch.allclose(total, 0.6 * F.cross_entropy(z, y) + 0.4 * sce, atol=1e-6)


# ---------------------------------------------------------------- metrics

def _synthetic(n: int, k: int, conf: np.ndarray, acc: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Predictions with max probability ``conf`` whose arg-max is right with probability ``acc``."""
    pred = rng.integers(0, k, n)
    probs = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(n), pred] = conf
    right = rng.random(n) < acc
    labels = np.where(right, pred, (pred + rng.integers(1, k, n)) % k)
    return probs, labels


def test_ece_zero_when_calibrated_large_when_overconfident():
    rng = np.random.default_rng(0)
    n, k = 200_000, 10
    conf = rng.uniform(0.1, 1.0, n)
    probs, labels = _synthetic(n, k, conf, conf, rng)          # right exactly as often as it claims
    assert ece(probs, labels, 15) < 0.01
    probs, labels = _synthetic(n, k, np.full(n, 0.99), np.full(n, 0.6), rng)  # claims 99 %, right 60 %
    assert abs(ece(probs, labels, 15) - 0.39) < 0.01
    bins = reliability_bins(probs, labels, 15)
    assert len(bins["count"]) == 15 and sum(bins["count"]) == n and bins["count"][-1] == n


def test_diversity_separates_uniform_and_uneven_non_target_mass():
    labels = np.array([0, 1])
    uniform = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]])       # label smoothing-like
    uneven = np.array([[0.7, 0.3, 0.0, 0.0], [0.0, 0.7, 0.1, 0.2]])
    d_u, d_e = predictive_diversity(uniform, labels), predictive_diversity(uneven, labels)
    assert d_u["nontarget_std"] == pytest.approx(0.0, abs=1e-9)
    assert d_e["nontarget_std"] > 0.2
    assert d_u["mean_entropy"] > d_e["mean_entropy"]
    assert d_u["true_prob_mean"] == pytest.approx(0.7)


# ---------------------------------------------------------------- settings and config layout

def test_settings_validate_and_reject_bad_input():
    s = SD.SelfDistillSettings()
    assert s.sd_alpha == 0.4 and s.sd_temperature == 4 and s.beta_alpha == 0.6 and s.beta_a == 3 and s.ece_bins == 15
    with pytest.raises(ValidationError, match="extra"):
        SD.SelfDistillSettings(generation=2)
    with pytest.raises(ValidationError):
        SD.SelfDistillSettings(variants=["ce", "mixup"])
    with pytest.raises(ValidationError, match="unique"):
        SD.SelfDistillSettings(seeds=[0, 0])
    with pytest.raises(UserError, match="in_features"):
        config(data={"name": "movie_reviews"})
    config(data={"name": "movie_reviews"}, student={"name": "mlp", "args": {"in_features": 384}})
    # the CE run is shared with self-distillation's generation 0
    lanes = SD.plan(SD.SelfDistillSettings(variants=["ce", "self_distill", "beta_smoothing"], seeds=[0, 1], generations=2))
    assert [[i.name for i in lane] for lane in lanes] == [
        ["ce-seed0", "self_distill-seed0-gen1", "self_distill-seed0-gen2"],
        ["ce-seed1", "self_distill-seed1-gen1", "self_distill-seed1-gen2"],
        ["beta_smoothing-seed0"], ["beta_smoothing-seed1"]]
    assert [i.teacher for i in lanes[0]] == [None, "ce-seed0", "self_distill-seed0-gen1"]


@pytest.mark.parametrize("raw, message", [
    ({"self_distill": {"variants": ["ce", "beta_smoothing"], "sd_temperature": 2.0}},
     "self_distill.sd_temperature: applies to the self_distill variant only"),
    ({"self_distill": {"variants": ["self_distill"], "epsilon": 0.2}}, "self_distill.epsilon: applies to the label_smoothing"),
    ({"self_distill": {"variants": ["ce"], "generations": 2}}, "self_distill.generations: applies to the self_distill"),
    ({"train": {"seed": 3}}, "train.seed: self_distill trains one model per entry of self_distill.seeds"),
    ({"self_distill": {"text_features": "tokens"}}, "self_distill.text_features: applies to text data only"),
    ({"self_distill": {"methods": ["ce"]}}, "self_distill.methods: is now self_distill.variants"),
    ({"self_distill": {"model": {"name": "cnn"}}}, "self_distill.model: is now the top-level section student"),
    ({"teacher": {"name": "cnn"}}, "teacher: unknown field"),
])
def test_config_refuses_what_does_not_apply(raw, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        config(**raw)


def test_configs_validate_in_the_new_layout():
    from raykd.config import load_config

    for path in sorted((REPO / "configs").glob("sd_*.yaml")):
        cfg = load_config(path)
        assert cfg.method == "self_distill" and cfg.self_distill.variants, path
        assert cfg.engine.num_workers == 1 and cfg.train.seed == 0, path


# ---------------------------------------------------------------- generation g's teacher is g-1; resume

def _fake_fit(seen: list, fail_on: str | None = None):
    """A stand-in for the engine's ``fit`` that 'trains' each model to distinct weights and records the
    task and the teacher's weights as a worker would build them."""
    from ray.train import Checkpoint

    from raykd.engine.checkpoint import save_weights

    def fake_fit(task, engine, name, storage, label=None, extra_config=None, callbacks=None):
        if fail_on and name.endswith(fail_on):
            raise RuntimeError(f"simulated crash in {name}")
        t = build_task(task)
        teacher = t.build_teacher()
        seen.append((name, task, None if teacher is None else {k: v.clone() for k, v in teacher.state_dict().items()}))
        torch.manual_seed(len(seen) + 100 * len(name))
        d = Path(storage) / name
        save_weights(t.build_student(), d / "model.safetensors")
        return SimpleNamespace(checkpoint=Checkpoint.from_directory(str(d)), metrics={})

    return fake_fit


def test_generation_g_loads_generation_g_minus_1_as_teacher_and_a_rerun_resumes(tmp_path, monkeypatch):
    """The chain with the engine replaced by a stand-in: every generation's teacher, built the way the
    engine builds it, holds exactly g-1's saved weights; a crash in generation 2 loses nothing before it,
    and the rerun trains generations 2 and 3 only, generation 2 taught by generation 1's weights on disk."""
    from safetensors.torch import load_file

    from raykd.lifecycle import make_context

    cfg = config(data={"name": "mnist", "train_subset": 200, "test_subset": 100}, output_dir=str(tmp_path),
                 student={"name": "cnn", "args": {"widths": [2], "hidden": 4}},
                 self_distill={"variants": ["self_distill"], "generations": 3, "seeds": [0]})
    ctx = make_context(cfg)
    [lane] = SD.plan(cfg.self_distill)
    seen: list = []
    monkeypatch.setattr(SD, "fit", _fake_fit(seen, fail_on="gen2"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        SD.run_lane(cfg, ctx, lane)
    assert list(ctx.rows()["item"]) == ["ce-seed0", "self_distill-seed0-gen1"]
    monkeypatch.setattr(SD, "fit", _fake_fit(seen))
    SD.run_lane(cfg, ctx, lane)
    assert [name.rsplit("-", 2)[-2:] for name, _, _ in seen] == [["ce", "seed0"], ["seed0", "gen1"], ["seed0", "gen2"], ["seed0", "gen3"]]
    rows = ctx.rows().set_index("item")
    assert list(rows.index) == [i.name for i in lane] and rows["run_id"].nunique() == 1
    assert list(rows["method"]) == ["ce", "self_distill/g1", "self_distill/g2", "self_distill/g3"]
    assert seen[0][2] is None and seen[0][1].loss_dicts() == [{"name": "ce", "weight": 1.0}]
    for g in range(1, 4):
        _, task, teacher_state = seen[g]
        prev = lane[g - 1].name
        assert task.teacher.weights == str(ctx.students_dir / prev)
        assert {l.name for l in task.losses} == {"ce", "soft_ce"}
        saved = load_file(ctx.students_dir / prev / "model.safetensors")
        assert set(saved) == set(teacher_state) and all(torch.equal(saved[k], teacher_state[k]) for k in saved)
        assert rows.loc[lane[g].name, "teacher_accuracy"] == rows.loc[prev, "accuracy"]
    # distinct generations really have distinct weights (so the check above is not vacuous)
    w1, w2 = (load_file(ctx.students_dir / lane[g].name / "model.safetensors") for g in (1, 2))
    assert any(not torch.equal(w1[k], w2[k]) for k in w1 if w1[k].is_floating_point())
    # a third attempt has nothing left to train
    SD.run_lane(cfg, ctx, lane)
    assert len(seen) == 4


# ---------------------------------------------------------------- real data, on Ray

@pytest.mark.ray
@pytest.mark.slow
def test_mnist_two_generations_and_beta_smoothing_on_ray(ray_session, tmp_path):
    """MNIST subset: a 1-generation self-distillation chain and Beta smoothing, side by side on Ray Train.

    Checks beyond 'it ran': every model learns (accuracy far above chance); generation 1 was taught by
    generation 0's saved weights (its teacher accuracy is generation 0's, and those weights reproduce it);
    both soft-target variants end less over-confident than CE (higher predictive entropy on test),
    which is what instance-specific smoothing is for.
    """
    import raykd

    raw = {"name": "sd_test", "method": "self_distill", "data": {"name": "mnist", "train_subset": 3000, "test_subset": 1000},
           "student": {"name": "cnn", "args": {"widths": [8, 16], "hidden": 32}},
           "train": {"epochs": 2, "batch_size": 64, "lr": 3e-3}, "engine": {"num_workers": 1},
           "self_distill": {"variants": ["self_distill", "beta_smoothing"], "generations": 1, "seeds": [0]}}
    df = raykd.run(raw, output_dir=tmp_path).table
    assert sorted(df["item"]) == ["beta_smoothing-seed0", "ce-seed0", "self_distill-seed0-gen1"]
    assert sorted(df["method"]) == ["beta_smoothing", "ce", "self_distill/g1"]
    by = {r["method"]: r for _, r in df.iterrows()}
    extra = {m: json.loads(r["extra"]) for m, r in by.items()}
    assert all(by[m]["accuracy"] > 0.85 for m in by)
    assert by["self_distill/g1"]["teacher_accuracy"] == pytest.approx(by["ce"]["accuracy"])
    assert extra["self_distill/g1"]["teacher_weights"] == str(tmp_path.resolve() / "students" / "ce-seed0")
    task = SD.make_task(parse_config(raw), "ce", 0)
    assert SD.judge(task, extra["self_distill/g1"]["teacher_weights"])["accuracy"] == pytest.approx(by["ce"]["accuracy"])
    assert extra["self_distill/g1"]["mean_entropy"] > extra["ce"]["mean_entropy"]
    assert extra["beta_smoothing"]["mean_entropy"] > extra["ce"]["mean_entropy"]
    for f in ("results.csv", "self_distill_metrics.csv", "self_distill_summary.csv", "reliability.png", "leaderboard.csv"):
        assert (tmp_path / f).exists()
    assert len(list((tmp_path / "tensorboard").iterdir())) == 3


@pytest.mark.slow
def test_smoke_rerun_after_killed_driver_has_every_item_once(tmp_path):
    """``raykd run configs/sd_smoke.yaml``, its driver SIGKILLed once the first model has its row; the
    same command again skips the finished models, trains the rest (generation 1 taught by generation 0's
    weights on disk) and ends with every item exactly once."""
    out = tmp_path / "out"
    cmd = [str(REPO / ".venv" / "bin" / "raykd"), "run", str(REPO / "configs" / "sd_smoke.yaml"),
           "--set", f"output_dir={out}", "--set", "ray.num_cpus=2"]
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    seen = {}

    def note_rows() -> None:
        seen["before"] = read_results(out)
        assert 1 <= len(seen["before"]) < 5, "the driver was killed too late to test resume"

    rerun = kill_driver_then_rerun(cmd, tmp_path, env, lambda: (out / "results.parquet").exists(), before_rerun=note_rows)
    before = seen["before"]
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for item in before["item"]:
        assert f"{item}: done in an earlier attempt" in rerun.stdout
    df = read_results(out)
    expected = ["beta_smoothing-seed0", "ce-seed0", "confidence_penalty-seed0", "label_smoothing-seed0",
                "self_distill-seed0-gen1"]
    assert sorted(df["item"]) == expected and df["run_id"].nunique() == 1
    rows = df.set_index("item")
    assert rows.loc["self_distill-seed0-gen1", "teacher_accuracy"] == rows.loc["ce-seed0", "accuracy"]
    assert all((out / "students" / item / "model.safetensors").is_file() for item in expected)
    assert len(pd.read_csv(out / "self_distill_metrics.csv")) == 5 and (out / "reliability.png").exists()
