"""Typed settings of a dual-policy-distillation experiment (the ``rl:`` section of a raykd config)."""

from __future__ import annotations

from typing import Literal

import gymnasium as gym
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Mode = Literal["dpd", "independent", "ppo_single"]


class RLSettings(BaseModel):
    """Every field has a default; the YAML ``rl:`` section overrides any of them.

    Modes: ``dpd`` = two peers with the distillation term; ``independent`` = two peers, distillation
    weight 0 (separates the effect of distillation from having two learners); ``ppo_single`` = one
    PPO learner in the same harness.
    """

    model_config = ConfigDict(extra="forbid")

    env: str = Field("HalfCheetah-v5", description="gymnasium id of a continuous-action task")
    algorithm: Literal["ppo"] = "ppo"
    modes: list[Mode] = Field(default_factory=lambda: ["dpd", "independent", "ppo_single"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    steps_per_learner: int = Field(100_000, ge=1, description="environment steps each peer learner takes")
    single_budget: Literal["total", "per_learner"] = Field(
        "total", description="ppo_single gets the peers' total steps (2x) or one learner's steps")

    # distillation term (paper: alpha in [0.1, 10], batch 256)
    alpha: float = Field(1.0, ge=0)
    distill_weight: float = Field(1.0, ge=0, description="lambda in L = L_PPO + lambda * J")
    distill_batch: int = Field(256, ge=1, description="peer states per minibatch used for J")
    distill_interval: int = Field(1, ge=1, description="apply J every this many training iterations")
    xi_clip: float = Field(5.0, gt=0, description="xi = V_peer - V_own is clipped to [-xi_clip, xi_clip]")
    weight_clip: float = Field(10.0, ge=1, description="weights exp(alpha*xi) are clipped at this value")

    # PPO (MuJoCo defaults of the PPO paper where RLlib allows)
    lr: float = Field(3e-4, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_param: float = Field(0.2, gt=0)
    vf_clip_param: float = Field(1000.0, gt=0)
    entropy_coeff: float = Field(0.0, ge=0)
    grad_clip: float = Field(0.5, gt=0)
    train_batch_size: int = Field(2048, ge=32, description="environment steps sampled per training iteration")
    minibatch_size: int = Field(64, ge=1)
    num_epochs: int = Field(10, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    activation: Literal["tanh", "relu"] = "tanh"

    # scaling (RLlib's own knobs)
    num_env_runners: int = Field(0, ge=0, description="0 = sample in the driver process")
    num_envs_per_env_runner: int = Field(1, ge=1)
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
        return v

    @field_validator("seeds", "modes")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v

    @model_validator(mode="after")
    def _batch_fits(self) -> "RLSettings":
        if self.minibatch_size > self.train_batch_size:
            raise ValueError("minibatch_size must be <= train_batch_size")
        return self
