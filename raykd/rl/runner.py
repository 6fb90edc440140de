"""Run a DPD experiment: every (mode, seed) through RLlib, learning curves, checkpoints, result rows.

Modes (same harness, same ``PeerEnv`` wrapper): ``dpd`` (two peers + distillation), ``independent``
(two peers, distillation weight 0) and ``single`` (one RLlib learner of the same algorithm, PPO or
SAC). The x-axis of every curve is environment steps *per learner*; ``single`` runs the peers' total
budget by default, and since no learning-rate schedules are used, its curve read at
``steps_per_learner`` is the same-per-learner baseline and its end point the same-total baseline.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_MODULE_RETURN_MEAN,
    EVALUATION_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
)

from raykd.errors import UserError
from raykd.results import append_rows, config_hash, make_row
from raykd.rl.dpd import DISTILL_LOSS_KEY, DPDConfig, DPDSACConfig
from raykd.rl.env import PeerEnv, learner_ids, policy_mapping_fn
from raykd.rl.settings import Mode, RLSettings
from raykd.runtime import init_ray

ROLE = {"dpd": "dpd-", "independent": "independent-", "single": ""}


def method_name(mode: Mode, algorithm: str = "ppo") -> str:
    """Results-table method of a run: dpd-ppo, independent-ppo, ppo, dpd-sac, independent-sac, sac."""
    return ROLE[mode] + algorithm


METHOD = {mode: method_name(mode) for mode in ROLE}  # PPO names (kept for callers that predate SAC)
CURVE_COLUMNS = ["mode", "seed", "iteration", "module", "steps", "env_steps", "return", "distill_loss", "time_s"]


def build_config(settings: RLSettings, mode: Mode, seed: int) -> AlgorithmConfig:
    """The RLlib AlgorithmConfig of one run: ``DPDConfig``/``DPDSACConfig`` for the peers, plain
    ``PPOConfig``/``SACConfig`` for one learner."""
    s = settings
    ids = learner_ids(1 if mode == "single" else 2)
    if s.algorithm == "ppo":
        config = PPOConfig() if mode == "single" else DPDConfig()
        module = RLModuleSpec(model_config=DefaultModelConfig(
            fcnet_hiddens=list(s.hidden), fcnet_activation=s.activation, vf_share_layers=False))
        config = config.training(
            lr=s.lr, gamma=s.gamma, lambda_=s.gae_lambda, clip_param=s.clip_param, vf_clip_param=s.vf_clip_param,
            entropy_coeff=s.entropy_coeff, grad_clip=s.grad_clip, use_kl_loss=False,
            train_batch_size_per_learner=s.train_batch_size, minibatch_size=s.minibatch_size, num_epochs=s.num_epochs)
    else:
        config = SACConfig() if mode == "single" else DPDSACConfig()
        module = RLModuleSpec(model_config=DefaultModelConfig(
            fcnet_hiddens=list(s.hidden), fcnet_activation=s.activation,
            head_fcnet_hiddens=[], head_fcnet_activation=None))
        config = config.training(
            actor_lr=s.actor_lr, critic_lr=s.critic_lr, alpha_lr=s.entropy_lr, gamma=s.gamma, tau=s.tau,
            train_batch_size_per_learner=s.train_batch_size, training_intensity=s.training_intensity,
            num_steps_sampled_before_learning_starts=s.learning_starts,
            replay_buffer_config={"type": "MultiAgentEpisodeReplayBuffer", "capacity": s.replay_capacity})
    config = (
        config.environment(PeerEnv, env_config={"env_id": s.env, "num_learners": len(ids)})
        .env_runners(num_env_runners=s.num_env_runners, num_envs_per_env_runner=s.num_envs_per_env_runner,
                     rollout_fragment_length=s.rollout_fragment_length or "auto")
        .learners(num_learners=s.num_learners, num_gpus_per_learner=s.num_gpus_per_learner)
        .multi_agent(policies=set(ids), policy_mapping_fn=policy_mapping_fn)
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={aid: module for aid in ids}))
        .reporting(metrics_num_episodes_for_smoothing=s.smoothing_episodes)
        .debugging(seed=seed)
    )
    if mode != "single":
        weight = s.distill_weight if mode == "dpd" else 0.0
        config.distillation(alpha=s.alpha, weight=weight, batch_size=s.distill_batch,
                            interval=s.distill_interval, xi_clip=s.xi_clip, weight_clip=s.weight_clip)
    if s.evaluation_interval:
        config.evaluation(evaluation_interval=s.evaluation_interval, evaluation_duration=s.evaluation_episodes,
                          evaluation_duration_unit="episodes", evaluation_config={"explore": False})
    return config


def run_budget(settings: RLSettings, mode: Mode) -> int:
    """Environment steps per learner of one run (``single`` gets the peers' total by default)."""
    return settings.steps_per_learner * (2 if mode == "single" and settings.single_budget == "total" else 1)


def policy_parameters(algo: Algorithm) -> int:
    """Parameters of one learner's policy (actor encoder + action head; value networks and critics excluded)."""
    module = algo.get_module(learner_ids(1)[0])
    critic = ("vf", "qf", "target_")
    return sum(p.numel() for n, p in module.named_parameters() if "critic" not in n and not n.startswith(critic))


def _check_env(env_id: str) -> None:
    env = gym.make(env_id)
    try:
        if not isinstance(env.action_space, gym.spaces.Box):
            raise UserError(f"rl.env: {env_id} has discrete actions; DPD here distils Gaussian action means, "
                            "so pick a continuous-control task such as HalfCheetah-v5")
    finally:
        env.close()


def _curve_records(result: dict, mode: str, seed: int, iteration: int, elapsed: float) -> list[dict]:
    runners = result[ENV_RUNNER_RESULTS]
    evaluation = result.get(EVALUATION_RESULTS, {}).get(ENV_RUNNER_RESULTS, {})
    steps = runners.get(NUM_MODULE_STEPS_SAMPLED_LIFETIME, {})
    rows = []
    for mid in sorted(steps):
        returns = evaluation.get(EPISODE_MODULE_RETURN_MEAN) or runners.get(EPISODE_MODULE_RETURN_MEAN, {})
        learner = result.get(LEARNER_RESULTS, {}).get(mid, {})
        rows.append({
            "mode": mode, "seed": seed, "iteration": iteration, "module": mid, "steps": float(steps[mid]),
            "env_steps": float(runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, math.nan)),
            "return": float(returns.get(mid, math.nan)),
            "distill_loss": float(learner.get(DISTILL_LOSS_KEY, math.nan)), "time_s": elapsed,
        })
    return rows


def train_one(settings: RLSettings, mode: Mode, seed: int, out_dir: Path,
              resume: Path | None = None) -> tuple[pd.DataFrame, dict]:
    """Train one (mode, seed) run to its step budget; returns its curve and its results row."""
    s, name = settings, f"{mode}-s{seed}"
    ckpt_dir, curve_path = out_dir / "checkpoints" / name, out_dir / "curves" / f"{name}.csv"
    curve_path.parent.mkdir(parents=True, exist_ok=True)
    budget = run_budget(s, mode)

    t0 = time.perf_counter()
    old_ckpt = resume / "checkpoints" / name if resume else None
    if old_ckpt is not None and old_ckpt.exists():
        algo = Algorithm.from_checkpoint(str(old_ckpt))
        records = pd.read_csv(resume / "curves" / f"{name}.csv").to_dict("records")
        print(f"[{name}] resumed from {old_ckpt} at iteration {algo.iteration}", flush=True)
    else:
        algo = build_config(s, mode, seed).build_algo()
        records = []

    steps = min((r["steps"] for r in records if r["iteration"] == records[-1]["iteration"]), default=0.0)
    start, start_steps = time.perf_counter(), None
    while steps < budget:
        result = algo.train()
        new = _curve_records(result, mode, seed, algo.iteration, time.perf_counter() - t0)
        records += new
        steps = min(r["steps"] for r in new)
        if start_steps is None:  # throughput is timed after the first (warm-up) iteration
            start_steps, start = sum(r["steps"] for r in new), time.perf_counter()
        returns = " / ".join(f"{r['return']:.1f}" for r in new)
        distill = " ".join(f"{r['distill_loss']:.4f}" for r in new if not math.isnan(r["distill_loss"]))
        print(f"[{name}] it {algo.iteration:3d}  steps/learner {steps:8.0f}/{budget}  return {returns}"
              + (f"  J {distill}" if distill else ""), flush=True)
        pd.DataFrame(records, columns=CURVE_COLUMNS).to_csv(curve_path, index=False)
        if s.checkpoint_every and algo.iteration % s.checkpoint_every == 0:
            algo.save_to_path(str(ckpt_dir))
    elapsed = time.perf_counter() - start
    final = [r for r in records if r["iteration"] == records[-1]["iteration"]]
    sampled = sum(r["steps"] for r in final) - start_steps if start_steps is not None else 0.0
    algo.save_to_path(str(ckpt_dir))
    params = policy_parameters(algo)
    algo.stop()

    curve = pd.DataFrame(records, columns=CURVE_COLUMNS)
    per_iter = curve.groupby("iteration")["return"].mean()  # peer-mean return per iteration
    extra = {
        "env": s.env, "mode": mode, "steps_per_learner": float(steps), "final_return": last_finite(per_iter),
        "best_return": float(per_iter.max()), "final_return_per_learner": {r["module"]: r["return"] for r in final},
        "steps_per_s": sampled / elapsed if sampled > 0 else math.nan, "checkpoint": str(ckpt_dir),
    }
    if mode == "single" and s.single_budget == "total":
        seen = curve.dropna(subset=["return"])
        extra["return_at_per_learner_budget"] = float(np.interp(s.steps_per_learner, seen["steps"], seen["return"]))
    row = make_row(method=method_name(mode, s.algorithm), dataset=s.env, student="mlp-" + "x".join(map(str, s.hidden)),
                   params=float(params), accuracy=float("nan"), wall_time_s=time.perf_counter() - t0, seed=seed,
                   cfg_hash=config_hash(s.model_dump()), run_id=f"{name}-{config_hash(s.model_dump())}",
                   eval_split="evaluation episodes", extra=extra)
    return curve, row


def last_finite(series: pd.Series) -> float:
    """The last non-NaN value (an iteration in which no episode ended reports no return)."""
    finite = series.dropna()
    return float(finite.iloc[-1]) if len(finite) else math.nan


def summarise_curves(curves: pd.DataFrame, points: int = 50) -> pd.DataFrame:
    """Mean and spread over seeds of the (peer-mean) return on a common grid of per-learner steps."""
    out = []
    for mode, df in curves.groupby("mode", sort=False):
        per_seed = df.groupby(["seed", "iteration"]).agg(steps=("steps", "min"), ret=("return", "mean")).reset_index()
        grid = np.linspace(per_seed["steps"].min(), per_seed["steps"].max(), points)
        ys = []
        for _, run in per_seed.groupby("seed"):
            run = run.dropna(subset=["ret"])
            if len(run):
                y = np.interp(grid, run["steps"], run["ret"])
                y[grid > run["steps"].max()] = np.nan  # no extrapolation past a run's end
                ys.append(y)
        ys = np.array(ys)
        out.append(pd.DataFrame({"mode": mode, "steps": grid, "mean": np.nanmean(ys, 0), "std": np.nanstd(ys, 0),
                                 "min": np.nanmin(ys, 0), "max": np.nanmax(ys, 0), "n_seeds": len(ys)}))
    return pd.concat(out, ignore_index=True)


def plot_curves(summary: pd.DataFrame, path: Path, title: str, steps_per_learner: int,
                algorithm: str = "ppo") -> None:
    """Return vs environment steps per learner: mean over seeds, shaded +- one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode, df in summary.groupby("mode", sort=False):
        ax.plot(df["steps"], df["mean"], label=f"{method_name(mode, algorithm)} (n={int(df['n_seeds'].iloc[0])})")
        ax.fill_between(df["steps"], df["mean"] - df["std"], df["mean"] + df["std"], alpha=0.2)
    ax.axvline(steps_per_learner, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="environment steps per learner", ylabel="mean episode return", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(settings: RLSettings, out_dir: Path, resume: str | None = None) -> pd.DataFrame:
    """Run every (mode, seed) of ``settings``; write curves (CSV + PNG), checkpoints and result rows.

    ``resume`` is a previous ``out_dir``: finished runs are reused, unfinished ones continue from
    their last RLlib checkpoint. Returns the results rows of this call as a DataFrame.
    """
    out_dir = Path(out_dir).resolve()  # RLlib's checkpointing (pyarrow) needs absolute paths
    out_dir.mkdir(parents=True, exist_ok=True)
    resume_dir = Path(resume).resolve() if resume else None
    if resume_dir is not None and not resume_dir.is_dir():
        raise UserError(f"resume: {resume} is not a directory; pass the output_dir of an earlier rl run")
    _check_env(settings.env)
    started = not ray.is_initialized()
    if started:
        init_ray(dashboard=False)  # RLlib needs no dashboard (no Ray Train placement-group cleaner here)
    done_path = out_dir / "finished.json"
    old_done = resume_dir / "finished.json" if resume_dir else None
    finished: dict[str, float] = json.loads(old_done.read_text()) if old_done and old_done.exists() else {}
    curves, rows = [], []
    try:
        for seed in settings.seeds:
            for mode in settings.modes:
                name = f"{mode}-s{seed}"
                if finished.get(name, -1.0) >= run_budget(settings, mode):
                    curves.append(pd.read_csv(resume_dir / "curves" / f"{name}.csv"))
                    print(f"[{name}] already finished in {resume_dir}; reusing its curve", flush=True)
                    continue
                curve, row = train_one(settings, mode, seed, out_dir, resume_dir)
                curves.append(curve)
                rows.append(row)
                append_rows(out_dir, [row])
                finished[name] = float(curve.groupby("iteration")["steps"].min().iloc[-1])
                done_path.write_text(json.dumps(finished))
    finally:
        if started:
            ray.shutdown()
    all_curves = pd.concat(curves, ignore_index=True)
    all_curves.to_csv(out_dir / "curves.csv", index=False)
    summary = summarise_curves(all_curves)
    summary.to_csv(out_dir / "curves_summary.csv", index=False)
    plot_curves(summary, out_dir / "curves.png", f"{settings.env} ({settings.algorithm.upper()})",
                settings.steps_per_learner, settings.algorithm)
    return pd.DataFrame(rows)
