"""Dataset distillation with learned soft labels (raykd.distill.dataset, dataset_ray, dataset_distill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from raykd.config import DataConfig, ModelSpec, parse_config
from raykd.distill.dataset import (
    DatasetDistillSettings, Recipe, SyntheticSet, build_learner, evaluate_distilled, evaluate_random_real, export,
    fit_distilled, init_params, load_distilled, load_real_data, meta_gradient, nearest_tokens, save_distilled,
    starting_params,
)
from raykd.errors import UserError
from raykd.results import read_results

REPO = Path(__file__).resolve().parents[1]


def distill_in_one_process(recipe: Recipe) -> dict[str, torch.Tensor]:
    """The whole outer loop in one process (the reference of what the Ray Train workers do): sample a
    real batch and theta_0, take the exact meta-gradient, Adam step on x~, y~ and eta."""
    settings = recipe.settings
    data = load_real_data(recipe.data)
    model = build_learner(recipe.learner, data)
    syn = SyntheticSet.initial(settings, data, settings.sample_count(data.num_classes), recipe.seed)
    opt = torch.optim.Adam(syn.parameters(), lr=settings.outer_lr, betas=settings.outer_betas)
    sched = torch.optim.lr_scheduler.StepLR(opt, settings.lr_decay_step, settings.lr_decay_factor)
    theta_run = starting_params(recipe, model)
    g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + 7919)
    for it in range(settings.outer_iterations):
        x_real, y_real = data.train_batch(settings.outer_batch_size, g)
        theta0 = (init_params(model, recipe.seed * 1_000_003 + it + 1, settings.init_scheme)
                  if settings.init == "random" else theta_run)
        _, grads = meta_gradient(model, syn, theta0, x_real, y_real, settings)
        for p, gr in zip(syn.parameters(), grads):
            p.grad = gr
        opt.step()
        sched.step()
    return export(syn)


def mnist_recipe(**settings) -> Recipe:
    return Recipe(DatasetDistillSettings(**settings), DataConfig(name="mnist"), ModelSpec(name="lenet5"), seed=0)


def check_refused(raw: dict, needle: str) -> None:
    with pytest.raises(UserError) as err:
        parse_config({"method": "dataset_distill", **raw})
    assert needle in str(err.value), str(err.value)


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
    check_refused({"data": {"name": "movie_reviews"}, "student": {"name": "lenet5"}}, "student.name: movie_reviews is text data")
    with pytest.raises(ValueError, match="pretrained_path"):
        DatasetDistillSettings(init="pretrained")
    with pytest.raises(ValueError, match="either num_samples or samples_per_class"):
        DatasetDistillSettings(num_samples=10, samples_per_class=2)
    with pytest.raises(ValueError):
        DatasetDistillSettings(steps_typo=3)
    assert DatasetDistillSettings(samples_per_class=2).sample_count(10) == 20
    assert DatasetDistillSettings().sample_count(10) == 10


def test_defaults_are_the_papers_fixed_init_mnist_recipe_and_the_mnist_configs_keep_them():
    """Sucholutsky & Schonlau's MNIST runs: free labels starting one-hot, 1 step x 3 epochs, distill lr 0.01,
    Adam 0.01 (betas 0.5, 0.999) on 1,024 real images, 350 passes over MNIST halved every 35 (59 batches a pass)."""
    from raykd.config import load_config

    s = DatasetDistillSettings()
    recipe = {"learn_labels": True, "label_projection": "free", "label_init": "onehot", "steps": 1, "epochs": 3,
              "inner_lr_init": 0.01, "outer_lr": 0.01, "outer_betas": (0.5, 0.999), "outer_batch_size": 1024,
              "outer_iterations": 350 * 59, "lr_decay_step": 35 * 59, "lr_decay_factor": 0.5,
              "init": "fixed", "init_scheme": "xavier", "sample_init": "noise", "split_per_step": False}
    assert {k: getattr(s, k) for k in recipe} == recipe
    for name, n in (("dd_mnist_10.yaml", 10), ("dd_mnist_5.yaml", 5)):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.data.name == "mnist" and cfg.student.name == "lenet5"
        assert {k: getattr(cfg.dataset_distill, k) for k in recipe} == recipe, name
        assert cfg.dataset_distill.sample_count(10) == n


@pytest.mark.parametrize("raw, needle", [
    ({"dataset_distill": {"dataset": "mnist"}}, "dataset_distill.dataset: moved: set data.name instead"),
    ({"dataset_distill": {"model_args": {"widths": [4]}}}, "dataset_distill.model_args: moved: set student.args"),
    ({"dataset_distill": {"num_workers": 2}}, "dataset_distill.num_workers: moved: set engine.num_workers"),
    ({"dataset_distill": {"max_tokens": 32}}, "dataset_distill.max_tokens: moved: set data.max_length"),
    ({"data": {"name": "mnist", "max_length": 32}}, "data.max_length: tokens per sentence apply to text"),
    ({"data": {"name": "sms_spam"}, "student": {"name": "lenet5"}}, "the learner must be textcnn"),
    ({"student": {"name": "textcnn"}}, "the learner must be an image model"),
    ({"engine": {"teacher_cache": True}}, "engine.teacher_cache: dataset_distill has no teacher"),
    ({"engine": {"checkpoint_every": 5}}, "dataset_distill.checkpoint_every outer iterations"),
    ({"metric": {"size": "macs"}}, "metric.size: dataset_distill measures a training set's size by its number of samples"),
    ({"teacher": {"name": "cnn"}}, "teacher: unknown field"),
    ({"dataset_distill": {"num_samples": 10, "steps": 3, "split_per_step": True}}, "10 samples do not split into 3"),
    ({"dataset_distill": {"pretrained_path": "x.safetensors"}}, "pretrained_path is read only with init: 'pretrained'"),
])
def test_config_refuses_what_does_not_apply(raw, needle):
    check_refused(raw, needle)


def test_every_dd_config_validates_and_a_dump_validates_again():
    """A sweep trial's config is the dump of the base config (every field set) with its sampled values."""
    for path in sorted((REPO / "configs").glob("dd_*.yaml")):
        from raykd.config import load_config

        cfg = load_config(path)
        dump = cfg.model_dump(mode="json")
        dump.pop("sweep", None)
        assert parse_config(dump).dataset_distill == cfg.dataset_distill, path


def test_short_mnist_run_beats_random_real_images(tmp_path):
    """100 outer iterations on real MNIST: 10 distilled images with soft labels (from noise) train a LeNet
    far better than 10 random real images with hard labels."""
    torch.set_num_threads(2)
    recipe = mnist_recipe(num_samples=10, steps=10, epochs=3, outer_iterations=100, outer_batch_size=256)
    distilled = distill_in_one_process(recipe)
    acc = evaluate_distilled(recipe, distilled, None)
    random_real = [evaluate_random_real(recipe.with_settings(real_train_steps=100), 10, seed) for seed in range(3)]
    assert acc > max(random_real) + 0.10, (acc, random_real)

    # the saved set (with its fixed init) trains a fresh nn.Module to the same accuracy
    data = load_real_data(recipe.data)
    net = build_learner(recipe.learner, data)
    path = save_distilled(tmp_path / "set.safetensors", distilled, recipe, data, starting_params(recipe, net))
    tensors, meta = load_distilled(path)
    assert meta["steps"] == "10" and tensors["x"].shape == (10, 1, 28, 28) and (tensors["lrs"] > 0).all()
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(tensors[f"init.{k}"])
    fit_distilled(net, tensors, recipe.settings.steps, recipe.settings.epochs)
    with torch.no_grad():
        replay_acc = float((net(data.test_x[:2000]).argmax(1) == data.test_y[:2000]).float().mean())
    assert abs(replay_acc - evaluate_distilled(recipe, distilled, None, limit=2000)) < 1e-6


def test_data_subsets_shape_the_real_data():
    """data.train_subset / test_subset (stratified) are the rows distilled from and evaluated on."""
    data = load_real_data(DataConfig(name="mnist", train_subset=600, test_subset=200))
    assert len(data.train_y) == 600 and len(data.test_y) == 200 and data.num_classes == 10
    assert "200 of its 10,000 rows" in data.eval_split
    assert abs(float(data.train_x.mean())) < 1e-4 and abs(float(data.train_x.std()) - 1.0) < 1e-3  # normalised by its own rows


def test_text_nearest_tokens_decode_real_embeddings():
    from raykd.distill.dataset import minilm_embedding_table

    table = minilm_embedding_table()
    ids = torch.tensor([[2023, 3185, 2003, 2307], [101, 102, 1996, 0]])
    assert torch.equal(nearest_tokens(table[ids], table), ids)


def tiny_run(tmp_path, **settings) -> dict:
    return {"name": "dd_tiny", "method": "dataset_distill", "output_dir": str(tmp_path),
            "engine": {"num_workers": 2, "max_failures": 0},
            "dataset_distill": {"num_samples": 5, "steps": 2, "epochs": 1, "outer_iterations": 4, "outer_batch_size": 64,
                                "eval_inits": 2, "baselines": False, "reference_epochs": 0, "checkpoint_every": 2,
                                "log_every": 2, "label_projection": "softmax", **settings}}  # labels stay distributions


@pytest.mark.ray
def test_ray_train_two_workers_returns_result_and_a_rerun_resumes(ray_session, tmp_path, capsys):
    import raykd

    result = raykd.run(tiny_run(tmp_path))
    table = result.table
    assert list(table["method"]) == ["dataset_distill[soft]"] and list(table["item"]) == ["distilled-soft"]
    assert table["params"].iloc[0] == 5 and 0.0 <= table["accuracy"].iloc[0] <= 1.0
    for name in ("distilled/soft.safetensors", "distilled/soft.png", "results.csv", "data.json", "leaderboard.csv"):
        assert (tmp_path / name).exists(), name
    tensors, _ = load_distilled(tmp_path / "distilled" / "soft.safetensors")
    labels = tensors["labels"]
    assert torch.allclose(labels.sum(1), torch.ones(5)) and (labels >= 0).all()
    assert any((tmp_path / "ray").glob(f"{result.run_id}-distill-soft*")), "the Train run is named after its item"
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents*"))

    # the same command again: every item has its row, nothing is distilled or evaluated again
    capsys.readouterr()
    again = raykd.run(tiny_run(tmp_path))
    assert "done in an earlier attempt" in capsys.readouterr().out
    assert list(again.table["time"]) == list(table["time"])

    # a driver killed after the distillation's last checkpoint but before the row: the Train run is
    # restored at its end (no iteration again) and reports the same set, whose evaluation gives the same row
    for f in ("results.parquet", "results.csv"):
        (tmp_path / f).unlink()
    third = raykd.run(tiny_run(tmp_path)).table
    extra = __import__("json").loads(third["extra"].iloc[0])
    assert extra["resumed_at_iteration"] == 4
    assert third["accuracy"].iloc[0] == table["accuracy"].iloc[0]


@pytest.mark.ray
def test_baselines_and_reference_rows_are_items(ray_session, tmp_path):
    import raykd

    table = raykd.run(tiny_run(tmp_path, baselines=True, reference_epochs=1, eval_inits=1),
                      overrides=["data.train_subset=2000", "data.test_subset=500"]).table
    rows = table.set_index("item")
    assert sorted(rows.index) == ["distilled-hard", "distilled-soft", "full-train-set", "random-real-5"]
    assert rows["method"].to_dict() == {"distilled-soft": "dataset_distill[soft]", "distilled-hard": "dataset_distill[hard]",
                                        "random-real-5": "random_real", "full-train-set": "teacher"}
    reference = rows.loc["full-train-set", "accuracy"]
    assert table["teacher_params"].eq(2000).all() and table["teacher_accuracy"].eq(reference).all()
    assert rows["params"].to_dict() == {"distilled-soft": 5, "distilled-hard": 5, "random-real-5": 5, "full-train-set": 2000}
    assert table["ds"].notna().all()
    assert (tmp_path / "distilled" / "hard.safetensors").exists()


@pytest.mark.ray
def test_sweep_over_distilled_set_size_runs_each_size_as_a_tune_trial(ray_session, tmp_path):
    """`raykd sweep` on a dataset_distill config: one Tune trial per num_samples value, each a whole
    distillation run, rows in the sweep's table with the trial's sampled size, and a leaderboard."""
    import yaml

    from raykd.sweep.tune import sweep

    raw = yaml.safe_load((REPO / "configs" / "dd_sweep.yaml").read_text())
    raw["output_dir"] = str(tmp_path)
    raw["dataset_distill"].update(outer_iterations=30, lr_decay_step=1000, eval_inits=2, reference_epochs=0,
                                  outer_batch_size=256)
    raw["sweep"].update(metric="accuracy", space={"dataset_distill.num_samples": {"grid": [2, 10]}})
    table = sweep(parse_config(raw))
    assert len(table) == 2 and set(table["params"]) == {2, 10}
    # one run per trial: run id "<sweep>/<trial>", one row (item distilled-soft) each
    assert table["run_id"].str.count("/").eq(1).all() and table["run_id"].nunique() == 2
    assert set(table["item"]) == {"distilled-soft"}
    acc = dict(zip(table["params"], table["accuracy"]))
    # 30 outer iterations: both sizes beat chance (0.1); 10 samples clearly beat 2 (which cannot cover 10 classes)
    assert acc[2] > 0.12 and acc[10] > 0.25 and acc[10] > acc[2] + 0.05, acc
    assert (tmp_path / "leaderboard.csv").exists() and (tmp_path / "accuracy_vs_size.png").exists()


def _group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` (the killed driver's leftover Ray) still runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.mark.slow
def test_rerun_after_killed_driver_resumes_with_every_item_once(tmp_path):
    """dd_smoke (with a longer outer loop) through the CLI; the driver is SIGKILLed once the soft distillation
    has written its first Train checkpoint; the same command again resumes that Train run from it and writes every item exactly once."""
    out = tmp_path / "run"
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "raykd.cli", "run", str(REPO / "configs" / "dd_smoke.yaml"), "--set", f"output_dir={out}",
           "--set", "ray.dashboard=false", "--set", "ray.num_cpus=2",
           "--set", "dataset_distill.outer_iterations=300", "--set", "dataset_distill.log_every=50"]  # time to kill it part-way
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 400
        while not list((out / "ray").glob("*-distill-soft/checkpoint_*")):
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail(f"no Train checkpoint of the soft distillation in time (driver exit code {proc.poll()})")
            time.sleep(1)
        time.sleep(2)  # let Ray Train register the checkpoint it has just written
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; Ray's reaper takes its local cluster down with it
        proc.wait()
        assert not (out / "results.csv").exists() or len(read_results(out)) == 0, "killed too late to test resume"
        deadline = time.time() + 60
        while _group_alive(proc.pid) and time.time() < deadline:
            time.sleep(1)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started, nothing else
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:] + rerun.stdout[-1500:]
    df = read_results(out)
    assert sorted(df["item"]) == ["distilled-hard", "distilled-soft", "random-real-5"], df[["run_id", "item"]]
    assert df["run_id"].nunique() == 1
    soft = __import__("json").loads(df.set_index("item").loc["distilled-soft", "extra"])
    resumed = soft["resumed_at_iteration"]  # from a checkpoint (every 20 iterations), not from 0 nor after the end
    assert 0 < resumed < 300 and resumed % 20 == 0, resumed
