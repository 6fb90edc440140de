"""Dataset distillation with learned soft labels (raykd.distill.dataset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from raykd.distill.dataset import (
    DatasetDistillSettings, SyntheticSet, build_learner, distill, evaluate_distilled, evaluate_random_real,
    fit_distilled, load_distilled, load_real_data, meta_gradient, nearest_tokens, save_distilled, starting_params,
)


def _tiny_problem(projection: str = "softmax", learn_labels: bool = True):
    """4 synthetic samples of 6 features, 3 classes, a tanh MLP, 2 steps x 2 epochs, all float64."""
    torch.manual_seed(0)
    settings = DatasetDistillSettings(steps=2, epochs=2, num_samples=4, label_projection=projection,
                                      learn_labels=learn_labels, label_init="random" if learn_labels else "onehot",
                                      split_per_step=True, inner_lr_init=0.3)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    labels = torch.randn(4, 3, dtype=torch.float64) if learn_labels else torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]]
    raw_lrs = torch.randn(4, dtype=torch.float64) * 0.3
    syn = SyntheticSet(torch.randn(4, 6, dtype=torch.float64), labels, raw_lrs, learn_labels, projection)
    x_real, y_real = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    return settings, model, theta0, syn, x_real, y_real


@pytest.mark.parametrize("projection", ["softmax", "free"])
def test_meta_gradient_matches_finite_differences(projection):
    settings, model, theta0, syn, x_real, y_real = _tiny_problem(projection)
    _, grads = meta_gradient(model, syn, theta0, x_real, y_real, settings)

    def loss_value() -> float:
        with torch.enable_grad():
            loss, _ = meta_gradient(model, syn, theta0, x_real, y_real, settings)
        return float(loss)

    eps = 1e-6
    rng = np.random.default_rng(0)
    for param, grad in zip(syn.parameters(), grads):
        for flat in rng.choice(param.numel(), size=min(6, param.numel()), replace=False):
            idx = np.unravel_index(flat, param.shape)
            with torch.no_grad():
                old = param[idx].item()
                param[idx] = old + eps
                up = loss_value()
                param[idx] = old - eps
                down = loss_value()
                param[idx] = old
            fd = (up - down) / (2 * eps)
            assert abs(fd - grad[idx].item()) <= 1e-6 + 1e-5 * abs(fd), (param.shape, idx, fd, grad[idx].item())


def test_meta_gradient_reaches_samples_labels_and_rates():
    settings, model, theta0, syn, x_real, y_real = _tiny_problem()
    _, grads = meta_gradient(model, syn, theta0, x_real, y_real, settings)
    assert [g.shape for g in grads] == [syn.x.shape, syn.label_param.shape, syn.raw_lrs.shape]
    assert all(g.abs().sum() > 0 for g in grads)
    # with fixed labels the labels are not learnable and stay exactly one-hot
    settings, model, theta0, syn, x_real, y_real = _tiny_problem(learn_labels=False)
    assert len(list(syn.parameters())) == 2
    assert torch.equal(syn.labels.sum(1), torch.ones(4, dtype=torch.float64))


def test_labels_stay_valid_distributions_and_rates_positive():
    settings, model, theta0, syn, x_real, y_real = _tiny_problem("softmax")
    opt = torch.optim.Adam(syn.parameters(), lr=0.5)  # large steps push raw parameters far, also negative
    for _ in range(30):
        _, grads = meta_gradient(model, syn, theta0, x_real, y_real, settings)
        for p, g in zip(syn.parameters(), grads):
            p.grad = g
        opt.step()
    assert (syn.raw_lrs < 0).any(), "the test should drive some raw learning rates negative"
    assert (syn.lrs > 0).all()
    labels = syn.labels
    assert (labels >= 0).all() and torch.allclose(labels.sum(1), torch.ones(4, dtype=torch.float64))


def test_settings_validate_fields():
    with pytest.raises(ValueError, match="textcnn"):
        DatasetDistillSettings(dataset="movie_reviews", model="lenet5")
    with pytest.raises(ValueError, match="pretrained_path"):
        DatasetDistillSettings(init="pretrained")
    with pytest.raises(ValueError, match="either num_samples or samples_per_class"):
        DatasetDistillSettings(num_samples=10, samples_per_class=2)
    with pytest.raises(ValueError):
        DatasetDistillSettings(steps_typo=3)
    assert DatasetDistillSettings(samples_per_class=2).sample_count() == 20


def test_short_mnist_run_beats_random_real_images(tmp_path):
    """100 outer iterations on real MNIST: 10 distilled images with soft labels (from noise) train a LeNet
    far better than 10 random real images with hard labels."""
    torch.set_num_threads(2)
    settings = DatasetDistillSettings(num_samples=10, steps=10, epochs=3, outer_iterations=100, outer_batch_size=256,
                                      seed=0)
    distilled = distill(settings)
    acc = evaluate_distilled(settings, distilled, None)
    random_real = [evaluate_random_real(settings.model_copy(update={"real_train_steps": 100}), 10, seed) for seed in range(3)]
    assert acc > max(random_real) + 0.10, (acc, random_real)

    # the saved set (with its fixed init) trains a fresh nn.Module to the same accuracy
    data = load_real_data("mnist")
    net = build_learner(settings, 10)
    path = save_distilled(tmp_path / "set.safetensors", distilled, settings, data, starting_params(settings, net))
    tensors, meta = load_distilled(path)
    assert meta["steps"] == "10" and tensors["x"].shape == (10, 1, 28, 28) and (tensors["lrs"] > 0).all()
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(tensors[f"init.{k}"])
    fit_distilled(net, tensors, settings.steps, settings.epochs)
    with torch.no_grad():
        replay_acc = float((net(data.test_x[:2000]).argmax(1) == data.test_y[:2000]).float().mean())
    assert abs(replay_acc - evaluate_distilled(settings, distilled, None, limit=2000)) < 1e-6


def test_text_nearest_tokens_decode_real_embeddings():
    from raykd.distill.dataset import minilm_embedding_table

    table = minilm_embedding_table()
    ids = torch.tensor([[2023, 3185, 2003, 2307], [101, 102, 1996, 0]])
    assert torch.equal(nearest_tokens(table[ids], table), ids)


@pytest.mark.ray
def test_ray_train_two_workers_returns_result(ray_session, tmp_path):
    settings = DatasetDistillSettings(num_samples=5, steps=2, epochs=1, outer_iterations=4, outer_batch_size=64,
                                      num_workers=2, eval_inits=2, baselines=False, reference_epochs=0,
                                      checkpoint_every=2, log_every=2)
    from raykd.distill.dataset import run

    table = run(settings, tmp_path)
    assert list(table["method"]) == ["dataset_distill[soft]"]
    assert table["params"].iloc[0] == 5 and 0.0 <= table["accuracy"].iloc[0] <= 1.0
    for name in ("distilled_soft.safetensors", "distilled_soft.png", "results.csv"):
        assert (tmp_path / name).exists(), name
    tensors, _ = load_distilled(tmp_path / "distilled_soft.safetensors")
    labels = tensors["labels"]
    assert torch.allclose(labels.sum(1), torch.ones(5)) and (labels >= 0).all()


@pytest.mark.ray
def test_sweep_over_distilled_set_size_runs_each_size_as_a_tune_trial(ray_session, tmp_path):
    """`raykd sweep` on a dataset_distill config: one Tune trial per num_samples value, each a whole
    distillation run, rows in the sweep's table with the trial's sampled size, and a leaderboard."""
    from pathlib import Path

    import yaml

    from raykd.config import parse_config
    from raykd.sweep.tune import sweep

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "dd_sweep.yaml").read_text())
    raw["output_dir"] = str(tmp_path)
    raw["dataset_distill"].update(outer_iterations=30, lr_decay_step=1000, eval_inits=2, reference_epochs=0,
                                  outer_batch_size=256)
    raw["sweep"].update(metric="accuracy", space={"dataset_distill.num_samples": {"grid": [2, 10]}})
    table = sweep(parse_config(raw))
    assert len(table) == 2 and set(table["params"]) == {2, 10}
    assert table["run_id"].str.count("/").eq(2).all() and table["run_id"].nunique() == 2
    acc = dict(zip(table["params"], table["accuracy"]))
    # 30 outer iterations: both sizes beat chance (0.1); 10 samples clearly beat 2 (which cannot cover 10 classes)
    assert acc[2] > 0.12 and acc[10] > 0.25 and acc[10] > acc[2] + 0.05, acc
    assert (tmp_path / "leaderboard.csv").exists() and (tmp_path / "accuracy_vs_size.png").exists()
