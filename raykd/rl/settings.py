"""Typed settings of a dual-policy-distillation experiment (the ``dpd:`` section of a raykd config).

Every field has a default. A field that does not apply to the chosen experiment is refused when the
config is read, not ignored: PPO's fields under ``algorithm: sac`` (and SAC's under ``ppo``), the
distillation term's fields without a ``dpd`` mode, ``single_budget`` without a ``single`` mode and
``evaluation_episodes`` without evaluations (:data:`APPLIES`)."""

from __future__ import annotations

from typing import Literal

import gymnasium as gym
from pydantic import Field, field_validator, model_validator

from raykd.schema import FieldError, Strict

Mode = Literal["dpd", "independent", "single"]
MODE_ALIASES = {"ppo_single": "single"}  # the name used before SAC joined


class DPDSettings(Strict):
    """Every field has a default; the YAML ``dpd:`` section overrides any of them.

    Modes: ``dpd`` = two peers with the distillation term; ``independent`` = two peers, distillation
    weight 0 (separates the effect of distillation from having two learners); ``single`` = one
    learner of the same algorithm in the same harness (``ppo_single`` is accepted as an alias).

    ``algorithm`` picks the RL algorithm of every learner: ``ppo`` (on-policy, the paper's first
    variant) or ``sac`` (off-policy; the paper used DDPG, both estimate V(s) from the critic).
    """

    env: str = Field("HalfCheetah-v5", description="gymnasium id of a continuous-action task")
    algorithm: Literal["ppo", "sac"] = "ppo"
    modes: list[Mode] = Field(default_factory=lambda: ["dpd", "independent", "single"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    steps_per_learner: int = Field(100_000, ge=1, description="environment steps each peer learner takes")
    single_budget: Literal["total", "per_learner"] = Field(
        "total", description="single gets the peers' total steps (2x) or one learner's steps")

    # distillation term (paper: alpha in [0.1, 10], batch 256)
    alpha: float = Field(1.0, ge=0)
    distill_weight: float = Field(1.0, ge=0, description="lambda in L = L_PPO + lambda * J")
    distill_batch: int = Field(256, ge=1, description="peer states per minibatch used for J")
    distill_interval: int = Field(1, ge=1, description="apply J every this many training iterations")
    xi_clip: float = Field(5.0, gt=0, description="xi = V_peer - V_own is clipped to [-xi_clip, xi_clip]")
    weight_clip: float = Field(10.0, ge=1, description="weights exp(alpha*xi) are clipped at this value")

    # shared by both algorithms
    gamma: float = Field(0.99, gt=0, le=1)
    train_batch_size: int | None = Field(
        None, ge=32, description="RLlib's train_batch_size_per_learner: PPO env steps per iteration (default 2048); "
        "SAC replay samples per update (default 256)")
    hidden: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    activation: Literal["tanh", "relu"] = "tanh"

    # PPO (MuJoCo defaults of the PPO paper where RLlib allows)
    lr: float = Field(3e-4, gt=0, description="PPO learning rate (SAC: actor_lr, critic_lr, entropy_lr)")
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_param: float = Field(0.2, gt=0)
    vf_clip_param: float = Field(1000.0, gt=0)
    entropy_coeff: float = Field(0.0, ge=0)
    grad_clip: float = Field(0.5, gt=0)
    minibatch_size: int = Field(64, ge=1)
    num_epochs: int = Field(10, ge=1)

    # SAC (Haarnoja et al. 2018 defaults where RLlib allows)
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    entropy_lr: float = Field(3e-4, gt=0, description="learning rate of the SAC temperature")
    tau: float = Field(0.005, gt=0, le=1, description="target-critic soft-update rate")
    replay_capacity: int = Field(1_000_000, ge=1, description="replay-buffer capacity, per learner")
    learning_starts: int = Field(1_000, ge=0, description="environment steps sampled before SAC updates start")
    training_intensity: float | None = Field(
        None, gt=0, description="replayed : sampled steps ratio (RLlib's knob; None = RLlib's native ratio)")

    # scaling (RLlib's own knobs)
    num_env_runners: int = Field(0, ge=0, description="0 = sample in the driver process")
    num_envs_per_env_runner: int = Field(1, ge=1)
    rollout_fragment_length: int | None = Field(
        None, ge=1, description="env steps per sampling call (None = RLlib's 'auto'; SAC's auto is 1 step, so "
        "a larger fragment amortises RLlib's per-call overhead)")
    num_learners: int = Field(0, ge=0, description="0 = one local learner")
    num_gpus_per_learner: float = Field(0.0, ge=0)

    # reporting / evaluation / checkpoints
    smoothing_episodes: int = Field(10, ge=1, description="episodes averaged into each curve point")
    evaluation_interval: int = Field(0, ge=0, description="iterations between greedy evaluations; 0 = curves from training episodes")
    evaluation_episodes: int = Field(5, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="iterations between checkpoints; 0 = only the final one")

    @field_validator("env")
    @classmethod
    def _known_env(cls, v: str) -> str:
        if v not in gym.registry:
            raise ValueError(f"unknown gymnasium environment {v!r} (e.g. HalfCheetah-v5, InvertedPendulum-v5)")
        env = gym.make(v)
        try:
            if not isinstance(env.action_space, gym.spaces.Box):
                raise ValueError(f"{v} has discrete actions; DPD here distils Gaussian action means, so pick a "
                                 "continuous-control task such as HalfCheetah-v5")
        finally:
            env.close()
        return v

    @field_validator("modes", mode="before")
    @classmethod
    def _aliases(cls, v: object) -> object:
        return [MODE_ALIASES.get(m, m) for m in v] if isinstance(v, list) else v

    @field_validator("seeds", "modes")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v

    @model_validator(mode="after")
    def _applies(self) -> "DPDSettings":
        for fields, applies, when in APPLIES:
            for name in sorted(set(fields) & self.model_fields_set):
                if not applies(self):
                    raise FieldError(name, f"applies only with {when}; {not_applicable_hint(name, self)}")
        return self

    @model_validator(mode="after")
    def _batch_fits(self) -> "DPDSettings":
        if self.train_batch_size is None:
            self.train_batch_size = 2048 if self.algorithm == "ppo" else 256
        if self.algorithm == "ppo" and self.minibatch_size > self.train_batch_size:
            raise ValueError("minibatch_size must be <= train_batch_size")
        return self


PPO_FIELDS = ("lr", "gae_lambda", "clip_param", "vf_clip_param", "entropy_coeff", "grad_clip", "minibatch_size", "num_epochs")
SAC_FIELDS = ("actor_lr", "critic_lr", "entropy_lr", "tau", "replay_capacity", "learning_starts", "training_intensity")
DISTILL_FIELDS = ("alpha", "distill_weight", "distill_batch", "distill_interval", "xi_clip", "weight_clip")

# (fields, whether they apply to these settings, when that is): a field set in a config where it does
# not apply is refused (``model_fields_set``: the fields the config gave, defaults excluded)
APPLIES = [
    (PPO_FIELDS, lambda s: s.algorithm == "ppo", "algorithm: ppo"),
    (SAC_FIELDS, lambda s: s.algorithm == "sac", "algorithm: sac"),
    (DISTILL_FIELDS, lambda s: "dpd" in s.modes, "a `dpd` mode in modes (the distillation term)"),
    (("single_budget",), lambda s: "single" in s.modes, "a `single` mode in modes"),
    (("evaluation_episodes",), lambda s: s.evaluation_interval > 0, "evaluation_interval > 0"),
]


def not_applicable_hint(name: str, s: DPDSettings) -> str:
    """What to do instead of setting ``name`` where it does not apply."""
    if name == "lr" and s.algorithm == "sac":
        return "SAC has one learning rate per optimizer: set actor_lr, critic_lr and entropy_lr"
    if name in PPO_FIELDS + SAC_FIELDS:
        return f"remove it, or set algorithm: {'ppo' if name in PPO_FIELDS else 'sac'}"
    return "remove it"
