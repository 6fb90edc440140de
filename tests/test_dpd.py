"""Dual Policy Distillation on RLlib: weight sign/clipping, weight 0 == PPO, a real MuJoCo run, checkpoints,
settings that do not apply refused, TensorBoard events, resume after a killed driver."""

from __future__ import annotations

import copy
import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
from ray.rllib.core.models.base import ENCODER_OUT
from ray.rllib.utils.replay_buffers.multi_agent_episode_buffer import MultiAgentEpisodeReplayBuffer

from driver_kill import kill_driver_then_rerun
from raykd.rl.dpd import DPDConfig, DPDSACConfig, disadvantage_weights, gaussian_mean, squashed_action
from raykd.rl.env import PeerEnv
from raykd.config import parse_config
from raykd.errors import UserError
from raykd.results import read_results
from raykd.rl.runner import RunPaths, build_config, checkpoints_of, train_one
from raykd.rl.settings import DPDSettings

REPO = Path(__file__).resolve().parents[1]

TINY = dict(env="InvertedPendulum-v5", train_batch_size=256, minibatch_size=64, num_epochs=2, hidden=[16, 16])


def test_weight_favours_states_where_peer_value_is_higher_and_is_clipped():
    xi = torch.tensor([-2.0, 0.0, 0.5, 2.0, 100.0])
    w = disadvantage_weights(xi, alpha=1.0, xi_clip=3.0, weight_clip=5.0)
    assert torch.all(w[1:] >= w[:-1]) and w[0] < w[1] < w[2]  # larger V_peer - V_own -> larger weight
    assert w[1] == pytest.approx(1.0)  # equal values -> weight 1
    assert w[0] == pytest.approx(np.exp(-2.0), rel=1e-5)  # exp(alpha * xi)
    assert w[3] == pytest.approx(5.0) and w[4] == pytest.approx(5.0)  # exp(2)=7.4 and exp(3) clipped at 5
    low = disadvantage_weights(torch.tensor([-100.0]), alpha=2.0, xi_clip=3.0, weight_clip=5.0)
    assert low.item() == pytest.approx(np.exp(-6.0), rel=1e-5)  # xi clipped to -3 before exp


def test_settings_reject_unknown_fields_and_envs():
    assert DPDSettings().modes == ["dpd", "independent", "single"]
    with pytest.raises(ValueError, match="distill_wieght"):
        DPDSettings(distill_wieght=1.0)
    with pytest.raises(ValueError, match="unknown gymnasium environment"):
        DPDSettings(env="HalfCheeta-v5")
    with pytest.raises(ValueError, match="minibatch_size"):
        DPDSettings(train_batch_size=64, minibatch_size=128)


def _learner(config: DPDConfig):
    return config.build_learner(env=PeerEnv({"env_id": "InvertedPendulum-v5", "num_learners": 2}))


def test_learner_distils_from_peer_with_weight_from_the_peer_value_gap():
    """In the learner itself, xi = V_peer - V_own: a peer valued higher gets the (clipped) large weight."""
    cfg = build_config(DPDSettings(**TINY, alpha=1.0, xi_clip=5.0, weight_clip=10.0), "dpd", seed=0)
    learner = _learner(cfg)
    m0, m1 = learner.module["learner_0"], learner.module["learner_1"]
    states = torch.randn(32, 4)
    with torch.no_grad():
        for m, bias in ((m0, 0.0), (m1, 4.0)):  # V_1(s) = V_0(s) + 4 everywhere: learner_1 is the better peer
            vf = m.vf.net.mlp[-1]
            vf.weight.zero_()
            vf.bias.fill_(bias)
    outs = {mid: learner.module[mid].forward_train({Columns.OBS: states}) for mid in ("learner_0", "learner_1")}
    batch = {mid: {Columns.OBS: states} for mid in outs}
    d = (gaussian_mean(outs["learner_0"][Columns.ACTION_DIST_INPUTS])
         - gaussian_mean(outs["learner_1"][Columns.ACTION_DIST_INPUTS])).pow(2).sum(-1).mean().item()
    j_worse_learns = learner.distillation_loss(own="learner_0", peer="learner_1", fwd_out=outs, batch=batch).item()
    j_better_learns = learner.distillation_loss(own="learner_1", peer="learner_0", fwd_out=outs, batch=batch).item()
    assert d > 0
    assert j_worse_learns == pytest.approx(min(np.exp(4.0), 10.0) * d, rel=1e-4)  # w = exp(4) clipped at 10
    assert j_better_learns == pytest.approx(np.exp(-4.0) * d, rel=1e-4)  # peer is worse: tiny weight


def _update(learner, episodes) -> dict[str, torch.Tensor]:
    learner.update(episodes=copy.deepcopy(episodes),  # the learner connector edits episodes in place timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 512}, num_epochs=2,
                   minibatch_size=128, shuffle_batch_per_epoch=False)
    return {f"{mid}.{k}": v.detach().clone() for mid in ("learner_0", "learner_1")
            for k, v in learner.module[mid].state_dict().items()}


def _updates_from_one_init(cfg, baseline_class, update, episodes):
    """One update each of DPD with weight 0, the algorithm's own learner and DPD with weight 1, all from
    the same initial weights and batch. Asserts that weight 0 gives exactly the baseline's update."""
    dpd0 = _learner(cfg.copy(copy_frozen=False).distillation(weight=0.0))
    init = dpd0.module.get_state()
    base = _learner(cfg.copy(copy_frozen=False).learners(learner_class=baseline_class))
    dpd1 = _learner(cfg.copy(copy_frozen=False).distillation(weight=1.0))
    for learner in (base, dpd1):
        learner.module.set_state(init)
    after = [update(learner, episodes) for learner in (dpd0, base, dpd1)]
    assert after[0].keys() == after[1].keys()
    for k in after[1]:
        torch.testing.assert_close(after[0][k], after[1][k], rtol=0, atol=0)
    return after


def test_zero_distillation_weight_gives_exactly_the_independent_ppo_update():
    """With weight 0, one DPD update of both peers equals RLlib's own PPO learner on the same batch."""
    cfg = build_config(DPDSettings(**TINY), "dpd", seed=0)
    episodes = MultiAgentEnvRunner(config=cfg).sample(num_timesteps=512, random_actions=False)

    after_dpd0, after_ppo, after_dpd1 = _updates_from_one_init(cfg, PPOTorchLearner, _update, episodes)
    # the distillation term does change the policy when its weight is positive
    changed = [k for k in after_ppo if "pi" in k and not torch.equal(after_dpd1[k], after_ppo[k])]
    assert changed


def _peer_action_gap(algo: Algorithm, states: torch.Tensor) -> float:
    with torch.no_grad():
        mu = [gaussian_mean(algo.get_module(m).forward_inference({Columns.OBS: states})[Columns.ACTION_DIST_INPUTS])
              for m in ("learner_0", "learner_1")]
    return float((mu[0] - mu[1]).pow(2).sum(-1).mean())


@pytest.mark.ray
def test_short_halfcheetah_run_distillation_loss_decreases(ray_session):
    """6 iterations of DPD-PPO on HalfCheetah-v5: J falls, and the peers end closer than independent peers."""
    settings = DPDSettings(env="HalfCheetah-v5", train_batch_size=1000, minibatch_size=125, num_epochs=5,
                          distill_weight=1.0, distill_batch=128)
    states = torch.tensor(np.random.default_rng(0).normal(0, 0.5, size=(512, 17)), dtype=torch.float32)
    gaps, losses = {}, []
    for mode in ("dpd", "independent"):
        algo = build_config(settings, mode, seed=0).build_algo()
        for _ in range(6):
            result = algo.train()
            if mode == "dpd":
                learners = result["learners"]
                losses.append(np.mean([learners[m]["dpd_distill_loss"] for m in ("learner_0", "learner_1")]))
        gaps[mode] = _peer_action_gap(algo, states)
        algo.stop()
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.8 * losses[0], losses
    assert gaps["dpd"] < gaps["independent"], gaps


def _paths(root: Path, name: str = "dpd-seed0") -> RunPaths:
    return RunPaths(checkpoints=root / "checkpoints" / name, curve=root / "curves" / f"{name}.csv",
                    tensorboard=root / "tensorboard" / name)


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files under ``logdir`` (TFRecord framing: length, CRC, event,
    CRC), as tag -> step -> value; a purged step (a resumed run) keeps the newest value."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for f in sorted(logdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        data, pos = f.read_bytes(), 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                scalars.setdefault(v.tag, {})[event.step] = v.simple_value
    return scalars


@pytest.mark.ray
def test_checkpoint_restores_and_training_continues(ray_session, tmp_path):
    """A run started again on the same paths resumes from its newest checkpoint: iterations go on from
    there (with a larger budget it trains further; with the same one it trains no more), only the
    newest checkpoints are kept, and every iteration's metrics are in TensorBoard."""
    settings = DPDSettings(**TINY, modes=["dpd"], seeds=[0], steps_per_learner=300, distill_weight=0.5, checkpoint_every=1)
    paths = _paths(tmp_path)
    _, first = train_one(settings, "dpd", 0, paths, label="first")
    restored = Algorithm.from_checkpoint(first["checkpoint"])
    assert isinstance(restored.config, DPDConfig) and restored.config.distill_weight == 0.5
    saved_iter = restored.iteration
    assert [p.name for p in checkpoints_of(paths.checkpoints)] == [f"iteration-{saved_iter:06d}", f"iteration-{saved_iter - 1:06d}"]
    saved = {k: v.clone() for k, v in restored.get_module("learner_0").state_dict().items()}
    restored.stop()
    tb = read_scalars(paths.tensorboard)
    assert sorted(tb["learners/learner_0/dpd_distill_loss"]) == list(range(1, saved_iter + 1))

    longer = settings.model_copy(update={"steps_per_learner": 900})
    curve, second = train_one(longer, "dpd", 0, paths, label="second")
    iters = curve.groupby("iteration")["steps"].min()
    assert list(iters.index) == list(range(1, len(iters) + 1))  # iterations continue, no restart at 1
    assert iters.index.max() > saved_iter and iters.is_monotonic_increasing and iters.iloc[-1] >= 900
    assert second["steps_per_learner"] >= 900 and pd.read_csv(paths.curve).equals(curve)
    assert sorted(read_scalars(paths.tensorboard)["learners/learner_1/dpd_distill_loss"]) == list(iters.index)

    cont = Algorithm.from_checkpoint(second["checkpoint"])
    assert cont.iteration == iters.index.max()
    now = cont.get_module("learner_0").state_dict()
    assert any(not torch.equal(now[k], saved[k]) for k in saved)  # training went on from the restored weights
    cont.stop()
    again, third = train_one(longer, "dpd", 0, paths, label="third")  # finished: restored, not trained further
    assert again["iteration"].max() == iters.index.max() and third["final_return"] == second["final_return"]


def _raw(dpd: dict, **top) -> dict:
    return {"method": "dpd", **top, "dpd": {"env": "InvertedPendulum-v5", **dpd}}


@pytest.mark.parametrize("dpd,top,message", [
    ({"algorithm": "sac", "lr": 1e-3}, {}, "dpd.lr: applies only with algorithm: ppo; SAC has one learning rate per optimizer"),
    ({"algorithm": "sac", "num_epochs": 3}, {}, "dpd.num_epochs: applies only with algorithm: ppo"),
    ({"algorithm": "sac", "minibatch_size": 32}, {}, "dpd.minibatch_size: applies only with algorithm: ppo"),
    ({"learning_starts": 10}, {}, "dpd.learning_starts: applies only with algorithm: sac"),
    ({"actor_lr": 1e-3}, {}, "dpd.actor_lr: applies only with algorithm: sac"),
    ({"modes": ["independent", "single"], "distill_weight": 2.0}, {}, "dpd.distill_weight: applies only with a `dpd` mode"),
    ({"modes": ["dpd"], "single_budget": "per_learner"}, {}, "dpd.single_budget: applies only with a `single` mode"),
    ({"evaluation_episodes": 3}, {}, "dpd.evaluation_episodes: applies only with evaluation_interval > 0"),
    ({"env": "CartPole-v1"}, {}, "dpd.env: CartPole-v1 has discrete actions"),
    ({}, {"seed": 1}, "seed: dpd runs every seed in dpd.seeds"),
    ({}, {"train": {"epochs": 1}}, "train: unknown field"),
])
def test_settings_that_do_not_apply_are_refused(dpd, top, message):
    with pytest.raises(UserError, match="^config: " + re.escape(message)):
        parse_config(_raw(dpd, **top))


def test_settings_of_the_chosen_algorithm_are_accepted_and_the_configs_validate():
    sac = parse_config(_raw({"algorithm": "sac", "actor_lr": 1e-3, "training_intensity": 8, "modes": ["single"]}))
    assert sac.dpd.actor_lr == 1e-3 and sac.dpd.train_batch_size == 256
    ppo = parse_config(_raw({"lr": 1e-3, "num_epochs": 3, "evaluation_interval": 2, "evaluation_episodes": 3}))
    assert ppo.dpd.lr == 1e-3 and ppo.dpd.train_batch_size == 2048
    from raykd.config import load_config

    for path in sorted((REPO / "configs").glob("dpd_*.yaml")):
        cfg = load_config(path)
        assert cfg.method == "dpd" and cfg.ray.dashboard is False, path


# ---------------------------------------------------------------------------------------------
# Off-policy variant: DPD-SAC (V(s) from the critics at the deterministic action)
# ---------------------------------------------------------------------------------------------

SAC_TINY = dict(env="InvertedPendulum-v5", algorithm="sac", hidden=[16, 16], train_batch_size=64, learning_starts=0)


def _set_critic_bias(module, bias: float) -> None:
    """Make Q(s, a) = bias for every state and action (both twin critics)."""
    with torch.no_grad():
        for head in (module.qf, module.qf_twin):
            last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.fill_(bias)


def test_sac_learner_weights_peer_states_by_the_critic_value_gap():
    """DPD-SAC: xi(s) = min_k Q~_k(s, mu~(s)) - min_k Q_k(s, mu(s)); the learner whose peer's critic is
    higher gets the large (clipped) weight, D is between the deterministic squashed actions."""
    cfg = build_config(DPDSettings(**SAC_TINY, alpha=1.0, xi_clip=5.0, weight_clip=10.0), "dpd", seed=0)
    assert isinstance(cfg, DPDSACConfig)
    learner = _learner(cfg)
    m0, m1 = learner.module["learner_0"], learner.module["learner_1"]
    _set_critic_bias(m0, 0.0)
    _set_critic_bias(m1, 4.0)  # V_1(s) = V_0(s) + 4 everywhere
    states = torch.randn(32, 4)
    with torch.no_grad():
        outs = {mid: {Columns.ACTION_DIST_INPUTS: m.pi(m.pi_encoder({Columns.OBS: states})[ENCODER_OUT])}
                for mid, m in (("learner_0", m0), ("learner_1", m1))}
    batch = {mid: {Columns.OBS: states} for mid in outs}
    a0, a1 = (squashed_action(outs[m][Columns.ACTION_DIST_INPUTS]) for m in ("learner_0", "learner_1"))
    assert a0.abs().max() <= 1.0  # SAC's normalised action space
    d = (a0 - a1).pow(2).sum(-1).mean().item()
    j_worse = learner.distillation_loss(own="learner_0", peer="learner_1", fwd_out=outs, batch=batch)
    j_better = learner.distillation_loss(own="learner_1", peer="learner_0", fwd_out=outs, batch=batch)
    assert d > 0
    assert j_worse.item() == pytest.approx(min(np.exp(4.0), 10.0) * d, rel=1e-4)
    assert j_better.item() == pytest.approx(np.exp(-4.0) * d, rel=1e-4)
    # J trains the actor only: its gradient reaches the policy network and no critic
    j_worse.backward()
    grads = {n: p.grad for n, p in m0.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("pi"))
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if n.startswith(("qf", "target")))


def _sac_update(learner, episodes, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # SAC's reparameterised action samples
    learner.update(episodes=copy.deepcopy(episodes), timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 512})
    return {f"{mid}.{k}": v.detach().clone() for mid in ("learner_0", "learner_1")
            for k, v in learner.module[mid].state_dict().items()}


def test_sac_zero_distillation_weight_gives_exactly_the_independent_sac_update():
    cfg = build_config(DPDSettings(**SAC_TINY), "dpd", seed=0)
    buffer = MultiAgentEpisodeReplayBuffer(capacity=10_000)
    buffer.add(MultiAgentEnvRunner(config=cfg).sample(num_timesteps=512, random_actions=True))
    episodes = buffer.sample(num_items=64, n_step=1, gamma=0.99, sample_episodes=True)

    after_dpd0, after_sac, after_dpd1 = _updates_from_one_init(cfg, SACTorchLearner, _sac_update, episodes)
    changed = [k for k in after_sac if not torch.equal(after_dpd1[k], after_sac[k])]
    assert changed and all(".pi" in k for k in changed), changed  # only the actor moves with J


@pytest.mark.ray
def test_short_sac_run_distillation_loss_decreases_and_checkpoint_restores(ray_session, tmp_path, monkeypatch):
    """DPD-SAC on InvertedPendulum-v5 through the method (raykd.api.run): J falls as the peers learn from
    each other, the run writes curves, TensorBoard events and one row, and its RLlib checkpoint restores
    as a DPD-SAC algorithm; run again, it trains nothing. The output directory is given relative, as
    configs do (RLlib's checkpointing needs it made absolute)."""
    import raykd

    settings = {**SAC_TINY, "train_batch_size": 128, "learning_starts": 200, "modes": ["dpd"], "seeds": [0],
                "steps_per_learner": 1200, "training_intensity": 32, "distill_batch": 128}
    monkeypatch.chdir(tmp_path)
    config = {"name": "sac", "method": "dpd", "output_dir": "runs/sac", "dpd": settings}
    result = raykd.run(config)
    rows, out = result.table, tmp_path / "runs" / "sac"
    assert rows["method"].tolist() == ["dpd-sac"] and rows["item"].tolist() == ["dpd-seed0"]
    extra = json.loads(rows["extra"][0])
    curve = pd.read_csv(extra["curve"])
    j = curve.dropna(subset=["distill_loss"]).groupby("iteration")["distill_loss"].mean()
    assert len(j) >= 4 and np.isfinite(j).all()
    assert j.iloc[-2:].mean() < 0.8 * j.iloc[:2].mean(), j.tolist()
    name = f"{result.run_id}-dpd-seed0"
    assert Path(extra["checkpoint"]).parent == out / "checkpoints" / name
    tb = read_scalars(out / "tensorboard" / name)
    assert sorted(tb["learners/learner_0/dpd_distill_loss"]) == sorted(j.index)
    assert (out / "curves.png").exists() and (out / "curves_summary.csv").exists()
    restored = Algorithm.from_checkpoint(extra["checkpoint"])
    assert isinstance(restored.config, DPDSACConfig) and restored.config.distill_weight == 1.0
    restored.train()  # continues from the restored state
    restored.stop()
    again = raykd.run(config)  # the same run: its one item is done, nothing is trained
    assert again.run_id == result.run_id and again.table["item"].tolist() == ["dpd-seed0"]
    assert again.table["time"].tolist() == rows["time"].tolist()


def _learner_copies(algo, module_id: str) -> list[dict[str, np.ndarray]]:
    """``module_id``'s weights as held by each of the algorithm's learner actors."""
    def weights(learner):
        return {k: v.detach().cpu().numpy().copy() for k, v in learner.module[module_id].unwrapped().state_dict().items()}

    return [r.get() for r in algo.learner_group.foreach_learner(weights)]


@pytest.mark.ray
@pytest.mark.parametrize("algorithm,mode", [("ppo", "dpd"), ("ppo", "independent"), ("sac", "dpd")])
def test_two_learner_actors_stay_in_sync_and_distil(ray_session, algorithm, mode):
    """num_learners=2 (two RLlib learner actors): both actors hold the same weights of each peer, and
    J falls. With RLlib's per-module DDP doing the averaging, the copies drifted apart in about half
    of the 2-learner PPO runs tried here (in "independent" mode too), so this check can catch that
    race only by chance; with the learners' explicit averaging it held in every run."""
    if algorithm == "ppo":
        settings = DPDSettings(env="HalfCheetah-v5", train_batch_size=500, minibatch_size=125, num_epochs=3,
                              distill_batch=128, num_learners=2)
        iterations = 5
    else:
        settings = DPDSettings(**{**SAC_TINY, "train_batch_size": 128, "learning_starts": 200}, training_intensity=32,
                              rollout_fragment_length=16, distill_batch=128, num_learners=2)
        iterations = 6
    algo = build_config(settings, mode, seed=0).build_algo()
    try:
        losses = []
        for _ in range(iterations):
            learners = algo.train().get("learners", {})
            if "dpd_distill_loss" in learners.get("learner_0", {}):
                losses.append(np.mean([learners[m]["dpd_distill_loss"] for m in ("learner_0", "learner_1")]))
        copies = {m: _learner_copies(algo, m) for m in ("learner_0", "learner_1")}
    finally:
        algo.stop()
    for m, (first, second) in copies.items():  # the two learner actors' replicas of each peer: identical
        assert all(np.array_equal(first[k], second[k]) for k in first), m
    peers = copies["learner_0"][0], copies["learner_1"][0]
    assert any(not np.array_equal(peers[0][k], peers[1][k]) for k in peers[0])  # two distinct peers
    if mode == "dpd":
        assert len(losses) >= 3 and np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_rerun_after_killed_driver_resumes_every_item_exactly_once(tmp_path):
    """``raykd run configs/dpd_smoke.yaml``, its driver SIGKILLed once the first item has its row and the
    next one a checkpoint; the same command again skips the finished item, resumes the interrupted one
    from its checkpoint (its curve's iterations go on, not from 1) and ends with every item once."""
    out = tmp_path / "out"
    cmd = [str(REPO / ".venv" / "bin" / "raykd"), "run", str(REPO / "configs" / "dpd_smoke.yaml"),
           "--set", f"output_dir={out}"]
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1", "OMP_NUM_THREADS": "1"}
    def ready() -> bool:  # the first item has its row and the next one a checkpoint
        rows = read_results(out) if (out / "results.parquet").exists() else pd.DataFrame()
        return len(rows) == 1 and bool(list((out / "checkpoints").glob("*-independent-seed0/iteration-*")))

    rerun = kill_driver_then_rerun(cmd, tmp_path, env, ready)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "dpd-seed0: done in an earlier attempt" in rerun.stdout
    assert "[independent-seed0] resumed from" in rerun.stdout
    df = read_results(out)
    assert sorted(df["item"]) == ["dpd-seed0", "independent-seed0", "single-seed0"] and df["run_id"].nunique() == 1
    curve = pd.read_csv(json.loads(df.set_index("item").loc["independent-seed0", "extra"])["curve"])
    iters = curve.groupby("iteration")["steps"].min()
    assert list(iters.index) == list(range(1, len(iters) + 1)) and iters.is_monotonic_increasing
    assert iters.iloc[-1] >= 6000 and (out / "curves.png").exists() and (out / "leaderboard.csv").exists()
