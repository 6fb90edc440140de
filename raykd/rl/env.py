"""Peer environment: one independent copy of a gymnasium task per learner, hosted as a MultiAgentEnv.

Dual Policy Distillation runs two learners that explore the *same* task but each in its own copy
of the environment. On RLlib's new API stack this is a ``MultiAgentEnv`` whose agents never
interact: agent ``learner_i`` acts only in copy ``i``, and a policy-mapping function sends agent
``learner_i`` to RLModule ``learner_i``. With one agent the same wrapper hosts plain PPO, so every
baseline runs through the identical harness.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from ray.rllib.env.multi_agent_env import MultiAgentEnv


def learner_ids(num_learners: int) -> list[str]:
    """Agent ids (also RLModule ids) of the peers: ``learner_0``, ``learner_1``, ..."""
    return [f"learner_{i}" for i in range(num_learners)]


def policy_mapping_fn(agent_id: str, episode: Any = None, **kwargs: Any) -> str:
    """Each agent is acted for by the RLModule of the same name."""
    return agent_id


class PeerEnv(MultiAgentEnv):
    """``num_learners`` independent copies of ``env_id``; an episode ends once every copy has ended.

    A copy that finishes early simply stops being stepped (its agent is done) until the others
    finish; then all copies reset together. Seeds differ per copy so the peers explore differently.
    """

    def __init__(self, config: dict | None = None):
        super().__init__()
        config = dict(config or {})
        self.env_id: str = config.get("env_id", "InvertedPendulum-v5")
        self.agents = self.possible_agents = learner_ids(int(config.get("num_learners", 2)))
        self.envs = {aid: gym.make(self.env_id) for aid in self.agents}
        self.observation_spaces = {aid: env.observation_space for aid, env in self.envs.items()}
        self.action_spaces = {aid: env.action_space for aid, env in self.envs.items()}
        self._done: set[str] = set()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._done = set()
        obs, infos = {}, {}
        for i, (aid, env) in enumerate(self.envs.items()):
            obs[aid], infos[aid] = env.reset(seed=None if seed is None else seed + 7919 * i, options=options)
        return obs, infos

    def step(self, action_dict: dict):
        obs, rewards, terminateds, truncateds, infos = {}, {}, {}, {}, {}
        for aid, action in action_dict.items():
            o, r, term, trunc, info = self.envs[aid].step(action)
            obs[aid], rewards[aid], terminateds[aid], truncateds[aid], infos[aid] = o, float(r), term, trunc, info
            if term or trunc:
                self._done.add(aid)
        all_done = len(self._done) == len(self.agents)
        terminateds["__all__"] = all_done and all(terminateds.get(a, True) for a in action_dict)
        truncateds["__all__"] = all_done and not terminateds["__all__"]
        return obs, rewards, terminateds, truncateds, infos

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
