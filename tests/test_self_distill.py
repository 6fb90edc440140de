"""Self-distillation and Beta smoothing (Zhang & Sabuncu 2020): losses, EMA, metrics, generation
wiring, and one small real-data run on Ray."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from raykd.distill import self_distill as SD
from raykd.distill.base import build_method
from raykd.losses import WeightedLoss, build_one
from raykd.losses.smoothing import beta_targets, smoothed_targets
from raykd.metrics import ece, predictive_diversity, reliability_bins


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
    task = SD.make_task(SD.SelfDistillSettings(model={"name": "mlp", "args": {"hidden": [3], "in_features": 2}},
                                               data={"name": "mnist"}), "beta_smoothing", 0)
    method = build_method(task)
    assert isinstance(method, SD.BetaSmoothingMethod)
    student = torch.nn.Sequential(torch.nn.Linear(2, 3))
    method.build_loss(student)
    iterates = []
    for step in range(50):
        with torch.no_grad():
            student[0].weight.fill_(float(step) ** 1.5)
        iterates.append(student[0].weight.detach().clone())
        method.after_step(student, step)
    # with decay 1 - 1/(t+1) the EMA is the plain mean of all iterates so far
    assert torch.allclose(method.ema[0].weight, torch.stack(iterates).mean(0), rtol=1e-5)
    # far along, the decay is capped at 0.999
    before = method.ema[0].weight.clone()
    with torch.no_grad():
        student[0].weight.fill_(1000.0)
    method.after_step(student, 10**6)
    assert torch.allclose(method.ema[0].weight, 0.999 * before + 0.001 * 1000.0)


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


# ---------------------------------------------------------------- settings

def test_settings_validate_and_reject_bad_input():
    s = SD.SelfDistillSettings()
    assert s.sd_alpha == 0.4 and s.sd_temperature == 4 and s.beta_alpha == 0.6 and s.beta_a == 3 and s.ece_bins == 15
    with pytest.raises(ValidationError, match="extra"):
        SD.SelfDistillSettings(generation=2)
    with pytest.raises(ValidationError):
        SD.SelfDistillSettings(methods=["ce", "mixup"])
    with pytest.raises(ValidationError, match="unique"):
        SD.SelfDistillSettings(seeds=[0, 0])
    with pytest.raises(ValidationError, match="in_features"):
        SD.SelfDistillSettings(data={"name": "movie_reviews"})
    SD.SelfDistillSettings(data={"name": "movie_reviews"}, model={"name": "mlp", "args": {"in_features": 384}})
    # the CE run is shared with self-distillation's generation 0
    assert [j["method"] for j in SD.jobs_of(SD.SelfDistillSettings(methods=["ce", "self_distill"], seeds=[0]))] == ["self_distill"]


# ---------------------------------------------------------------- generation g's teacher is g-1

def test_generation_g_loads_generation_g_minus_1_as_teacher(tmp_path, monkeypatch):
    """The chain with the engine replaced by a stand-in that 'trains' each model to distinct weights:
    every generation's teacher, built the way the engine builds it, holds exactly g-1's weights."""
    settings = SD.SelfDistillSettings(data={"name": "mnist", "train_subset": 200, "test_subset": 100},
                                      model={"name": "cnn", "args": {"widths": [2], "hidden": 4}}, generations=3)
    seen: list = []

    def fake_fit(task, engine, name, storage, label=None, extra_config=None):
        method = build_method(task)
        teacher = method.build_teacher()
        seen.append((task, None if teacher is None else {k: v.clone() for k, v in teacher.state_dict().items()}))
        torch.manual_seed(len(seen))
        model = method.build_student()
        d = Path(storage) / name
        from raykd.engine.checkpoint import save_weights
        from ray.train import Checkpoint

        save_weights(model, d / "model.safetensors")
        return SimpleNamespace(checkpoint=Checkpoint.from_directory(str(d)), metrics={})

    monkeypatch.setattr(SD, "fit", fake_fit)
    models = SD.self_distill_chain(settings, seed=0, out_dir=tmp_path, storage=tmp_path / "ray", run_tag="t")
    assert [m["label"] for m in models] == ["ce", "self_distill/g1", "self_distill/g2", "self_distill/g3"]
    assert seen[0][1] is None and seen[0][0].losses == [{"name": "ce", "weight": 1.0}]
    from safetensors.torch import load_file

    for g in range(1, 4):
        task, teacher_state = seen[g]
        assert task.teacher["weights"] == models[g - 1]["weights"]
        assert {l["name"] for l in task.losses} == {"ce", "soft_ce"}
        prev = load_file(models[g - 1]["weights"])
        assert set(prev) == set(teacher_state)
        assert all(torch.equal(prev[k], teacher_state[k]) for k in prev)
        assert models[g]["teacher"]["accuracy"] == models[g - 1]["accuracy"]
    # distinct generations really have distinct weights (so the check above is not vacuous)
    w1, w2 = load_file(models[1]["weights"]), load_file(models[2]["weights"])
    assert any(not torch.equal(w1[k], w2[k]) for k in w1 if w1[k].is_floating_point())


# ---------------------------------------------------------------- real data, on Ray

@pytest.mark.ray
@pytest.mark.slow
def test_mnist_two_generations_and_beta_smoothing_on_ray(ray_session, tmp_path):
    """MNIST subset, Tune trials of a 2-generation self-distillation chain and Beta smoothing.

    Checks beyond 'it ran': every model learns (accuracy far above chance); generation 1 was taught by
    generation 0's checkpoint (its teacher accuracy is generation 0's, and those weights reproduce it);
    both soft-target methods end less over-confident than CE (higher predictive entropy on test),
    which is what instance-specific smoothing is for.
    """
    settings = SD.SelfDistillSettings(
        data={"name": "mnist", "train_subset": 3000, "test_subset": 1000},
        model={"name": "cnn", "args": {"widths": [8, 16], "hidden": 32}},
        train={"epochs": 2, "batch_size": 64, "lr": 3e-3}, engine={"num_workers": 1},
        methods=["self_distill", "beta_smoothing"], generations=1, seeds=[0])
    df = SD.run(settings, tmp_path)
    assert sorted(df["method"]) == ["beta_smoothing", "ce", "self_distill/g1"]
    by = {r["method"]: r for _, r in df.iterrows()}
    extra = {m: json.loads(r["extra"]) for m, r in by.items()}
    assert all(by[m]["accuracy"] > 0.85 for m in by)
    assert by["self_distill/g1"]["teacher_accuracy"] == pytest.approx(by["ce"]["accuracy"])
    task = SD.make_task(settings, "ce", 0)
    assert SD.judge(task, extra["self_distill/g1"]["teacher_weights"])["accuracy"] == pytest.approx(by["ce"]["accuracy"])
    assert extra["self_distill/g1"]["mean_entropy"] > extra["ce"]["mean_entropy"]
    assert extra["beta_smoothing"]["mean_entropy"] > extra["ce"]["mean_entropy"]
    for f in ("results.csv", "self_distill_metrics.csv", "self_distill_summary.csv", "reliability.png"):
        assert (tmp_path / f).exists()
