"""RLlib plumbing of a DPD experiment: the AlgorithmConfig of one (mode, seed), training it to its
step budget (resuming from its newest checkpoint), its learning curve and TensorBoard events, and
the curves' summary and plot. The method itself (items, results rows) is :mod:`raykd.distill.dpd`.

Modes (same harness, same ``PeerEnv`` wrapper): ``dpd`` (two peers + distillation), ``independent``
(two peers, distillation weight 0) and ``single`` (one RLlib learner of the same algorithm, PPO or
SAC). The x-axis of every curve is environment steps *per learner*; ``single`` runs the peers' total
budget by default, and since no learning-rate schedules are used, its curve read at
``steps_per_learner`` is the same-per-learner baseline and its end point the same-total baseline.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
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

from raykd.rl.dpd import DISTILL_LOSS_KEY, DPDConfig, DPDSACConfig
from raykd.rl.env import PeerEnv, learner_ids, policy_mapping_fn
from raykd.rl.settings import DPDSettings, Mode

ROLE = {"dpd": "dpd-", "independent": "independent-", "single": ""}


def method_name(mode: Mode, algorithm: str = "ppo") -> str:
    """Results-table method of a run: dpd-ppo, independent-ppo, ppo, dpd-sac, independent-sac, sac."""
    return ROLE[mode] + algorithm


CURVE_COLUMNS = ["mode", "seed", "iteration", "module", "steps", "env_steps", "return", "distill_loss", "time_s"]


def build_config(settings: DPDSettings, mode: Mode, seed: int) -> AlgorithmConfig:
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


def run_budget(settings: DPDSettings, mode: Mode) -> int:
    """Environment steps per learner of one run (``single`` gets the peers' total by default)."""
    return settings.steps_per_learner * (2 if mode == "single" and settings.single_budget == "total" else 1)


def policy_parameters(algo: Algorithm) -> int:
    """Parameters of one learner's policy (actor encoder + action head; value networks and critics excluded)."""
    module = algo.get_module(learner_ids(1)[0])
    critic = ("vf", "qf", "target_")
    return sum(p.numel() for n, p in module.named_parameters() if "critic" not in n and not n.startswith(critic))


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


@dataclass(frozen=True)
class RunPaths:
    """Where one (mode, seed) run keeps its state; the same paths on every attempt, so a rerun resumes."""

    checkpoints: Path  # iteration-NNNNNN/ RLlib checkpoints, the newest kept
    curve: Path        # its learning curve (CSV), one row per iteration and learner
    tensorboard: Path  # TensorBoard event files of every iteration's metrics


def checkpoints_of(directory: Path) -> list[Path]:
    """The run's checkpoints, newest first (each is written under a temporary name, then renamed)."""
    return sorted(directory.glob("iteration-*"), reverse=True) if directory.is_dir() else []


def save_checkpoint(algo: Algorithm, directory: Path, keep: int = 2) -> Path:
    """Save ``algo`` as ``directory/iteration-NNNNNN`` (atomically: a driver killed while saving leaves
    the earlier checkpoints intact) and drop all but the newest ``keep``."""
    final = directory / f"iteration-{algo.iteration:06d}"
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp))  # RLlib's checkpointing (pyarrow) needs absolute paths
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoints_of(directory)[keep:] + list(directory.glob(".tmp-*")):
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore_or_build(settings: DPDSettings, mode: Mode, seed: int, paths: RunPaths, label: str) -> tuple[Algorithm, list[dict]]:
    """The algorithm restored from the run's newest intact checkpoint with its curve up to there, or
    a new one with an empty curve."""
    for ckpt in checkpoints_of(paths.checkpoints):
        try:
            algo = Algorithm.from_checkpoint(str(ckpt))
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint: try the one before it
            print(f"[{label}] checkpoint {ckpt} does not load ({type(e).__name__}: {e}); trying an older one", flush=True)
            continue
        curve = pd.read_csv(paths.curve) if paths.curve.exists() else pd.DataFrame(columns=CURVE_COLUMNS)
        records = curve[curve["iteration"] <= algo.iteration].to_dict("records")
        print(f"[{label}] resumed from {ckpt} at iteration {algo.iteration}", flush=True)
        return algo, records
    return build_config(settings, mode, seed).build_algo(), []


def flat_scalars(result: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) RLlib result dict, keyed ``learners/learner_0/dpd_distill_loss``."""
    out = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_scalars(value, name + "/"))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
            out[name] = float(value)
    return out


def tensorboard_writer(logdir: Path, iteration: int):
    """A tensorboardX writer (Ray 2.x's Trainable has no logger_creator/UnifiedLogger any more). On a
    resumed run, ``purge_step`` hides the events an earlier attempt wrote past the restored iteration."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(logdir), purge_step=iteration + 1 if iteration else None, flush_secs=10)


def train_one(settings: DPDSettings, mode: Mode, seed: int, paths: RunPaths, label: str) -> tuple[pd.DataFrame, dict]:
    """Train one (mode, seed) run to its step budget, resuming from its newest checkpoint; returns its
    curve and its figures (returns, steps, throughput, policy parameters, final checkpoint)."""
    s, budget, t0 = settings, run_budget(settings, mode), time.perf_counter()
    paths.curve.parent.mkdir(parents=True, exist_ok=True)
    algo, records = restore_or_build(s, mode, seed, paths, label)
    writer = tensorboard_writer(paths.tensorboard, algo.iteration)
    steps = min((r["steps"] for r in records if r["iteration"] == records[-1]["iteration"]), default=0.0)
    start, start_steps = time.perf_counter(), None
    try:
        while steps < budget:
            result = algo.train()
            for tag, value in flat_scalars(result).items():
                writer.add_scalar(tag, value, global_step=algo.iteration)
            writer.flush()
            new = _curve_records(result, mode, seed, algo.iteration, time.perf_counter() - t0)
            records += new
            steps = min(r["steps"] for r in new)
            if start_steps is None:  # throughput is timed after the first (warm-up) iteration
                start_steps, start = sum(r["steps"] for r in new), time.perf_counter()
            print_iteration(label, algo.iteration, steps, budget, new)
            pd.DataFrame(records, columns=CURVE_COLUMNS).to_csv(paths.curve, index=False)
            if s.checkpoint_every and algo.iteration % s.checkpoint_every == 0 and steps < budget:
                save_checkpoint(algo, paths.checkpoints)
        elapsed = time.perf_counter() - start
        final = [r for r in records if r["iteration"] == records[-1]["iteration"]]
        sampled = sum(r["steps"] for r in final) - start_steps if start_steps is not None else 0.0
        ckpt = save_checkpoint(algo, paths.checkpoints)
        params = policy_parameters(algo)
    finally:
        writer.close()
        algo.stop()
    curve = pd.DataFrame(records, columns=CURVE_COLUMNS)
    return curve, curve_figures(curve, s, mode, final) | {
        "steps_per_learner": float(steps), "steps_per_s": sampled / elapsed if sampled > 0 else math.nan,
        "checkpoint": str(ckpt), "params": params, "wall_time_s": time.perf_counter() - t0}


def print_iteration(label: str, iteration: int, steps: float, budget: int, new: list[dict]) -> None:
    returns = " / ".join(f"{r['return']:.1f}" for r in new)
    distill = " ".join(f"{r['distill_loss']:.4f}" for r in new if not math.isnan(r["distill_loss"]))
    print(f"[{label}] it {iteration:3d}  steps/learner {steps:8.0f}/{budget}  return {returns}"
          + (f"  J {distill}" if distill else ""), flush=True)


def curve_figures(curve: pd.DataFrame, s: DPDSettings, mode: Mode, final: list[dict]) -> dict:
    """Final and best peer-mean return of a run (and, for a single learner given the peers' total
    budget, its return at one peer's budget)."""
    per_iter = curve.groupby("iteration")["return"].mean()  # peer-mean return per iteration
    out = {"final_return": last_finite(per_iter), "best_return": float(per_iter.max()),
           "final_return_per_learner": {r["module"]: r["return"] for r in final}}
    if mode == "single" and s.single_budget == "total":
        seen = curve.dropna(subset=["return"])
        out["return_at_per_learner_budget"] = float(np.interp(s.steps_per_learner, seen["steps"], seen["return"]))
    return out

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
