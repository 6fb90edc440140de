"""Dual Policy Distillation (Lai, Zha, Li, Hu; IJCAI 2020) as RLlib PPO and SAC variants.

Two peer learners pi and pi~ explore their own copies of one task. Each keeps its PPO loss and
adds a *disadvantageous distillation* term computed on the peer's most recent states:

    xi(s)    = V~(s) - V(s)                                  (peer's value advantage in state s)
    w(s)     = min(exp(alpha * clip(xi(s), -c, c)), w_max)  (soft form of the hard weight 1[xi(s) > 0])
    J(theta) = E_{s ~ peer's batch}[ w(s) * || mu_theta(s) - mu~(s) ||^2 ]
    L(theta) = L_PPO(theta) + lambda_distill * J(theta)

and symmetrically for the peer. Everything lives on RLlib's new API stack: the peers are two
RLModules in one MultiRLModule, and the learner's ``compute_losses`` sees the whole
MultiAgentBatch, so module ``i`` reads module ``j``'s states, actions and values there.

Two variants share the distillation term (:class:`PeerDistillationMixin`):

- on-policy, ``DPDConfig`` / ``DPDTorchLearner`` (PPO): mu is the Gaussian action mean, V the
  PPO value head, and the peer's states are its freshly sampled on-policy batch;
- off-policy, ``DPDSACConfig`` / ``DPDSACTorchLearner`` (SAC; the paper used DDPG): mu is the
  deterministic squashed action tanh(mean), V(s) = min_k Q_k(s, mu(s)) from the learner's own twin
  critics (the DDPG-style value of the greedy action), the peer's states are its replay-buffer
  batch of the same update, and J is added to the actor loss only (critics and temperature keep
  their SAC losses).
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.algorithms.sac import SAC, SACConfig
from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
from ray.rllib.core.learner.learner import POLICY_LOSS_KEY
from ray.rllib.core.models.base import ENCODER_OUT
from ray.rllib.core.columns import Columns
from ray.rllib.utils.typing import ModuleID
import torch

DISTILL_LOSS_KEY = "dpd_distill_loss"  # J(theta), logged per module
PEER_BETTER_KEY = "dpd_frac_peer_better"  # fraction of peer states with xi(s) > 0
XI_MEAN_KEY = "dpd_xi_mean"  # mean of xi(s) = V~(s) - V(s) over the distillation batch


def disadvantage_weights(xi: torch.Tensor, alpha: float, xi_clip: float, weight_clip: float) -> torch.Tensor:
    """Soft disadvantageous-distillation weights w(s) for value gaps xi(s) = V_peer(s) - V_own(s).

    w(s) = min(exp(alpha * clip(xi(s), -xi_clip, xi_clip)), weight_clip): states where the peer's
    value is higher get the larger weight; w = 1 where both values agree. The weight is not
    re-normalised over the batch, so a peer that is worse everywhere is (almost) ignored, as in the
    hard form 1[xi(s) > 0] that the soft weight approximates for large alpha.
    """
    return torch.exp(alpha * xi.clamp(-xi_clip, xi_clip)).clamp(max=weight_clip)


def gaussian_mean(action_dist_inputs: torch.Tensor) -> torch.Tensor:
    """Action mean of RLlib's diagonal Gaussian, whose inputs are ``[mean, log_std]`` concatenated."""
    return torch.chunk(action_dist_inputs, 2, dim=-1)[0]


DISTILL_FIELDS = ("alpha", "weight", "batch_size", "interval", "xi_clip", "weight_clip")


class DistillationOptions:
    """The ``.distillation(...)`` builder method shared by ``DPDConfig`` and ``DPDSACConfig``."""

    def _distillation_defaults(self) -> None:
        self.distill_alpha = 1.0
        self.distill_weight = 1.0
        self.distill_batch_size = 256
        self.distill_interval = 1
        self.distill_xi_clip = 5.0
        self.distill_weight_clip = 10.0

    def distillation(self, *, alpha: float = NotProvided, weight: float = NotProvided,
                     batch_size: int = NotProvided, interval: int = NotProvided,
                     xi_clip: float = NotProvided, weight_clip: float = NotProvided):
        """Set the distillation term.

        Args:
            alpha: temperature of w(s) = exp(alpha * xi(s)); large alpha approaches the hard 1[xi > 0].
            weight: lambda_distill, the weight of J(theta) next to the RL loss (0 = independent peers).
            batch_size: number of the peer's states per minibatch used for J (sampled without replacement).
            interval: apply the distillation term every ``interval``-th learner update.
            xi_clip: xi(s) is clipped to [-xi_clip, xi_clip] before the exponential.
            weight_clip: the weights exp(alpha * xi) are clipped at this value.
        """
        for name, value in zip(DISTILL_FIELDS, (alpha, weight, batch_size, interval, xi_clip, weight_clip)):
            if value is not NotProvided:
                setattr(self, f"distill_{name}", value)
        return self

    def _validate_distillation(self) -> None:
        if self.distill_weight < 0 or self.distill_alpha < 0:
            raise ValueError("DPD distillation: `weight` and `alpha` must be >= 0.")
        if self.distill_batch_size < 1 or self.distill_interval < 1:
            raise ValueError("DPD distillation: `batch_size` and `interval` must be >= 1.")


class DPDConfig(DistillationOptions, PPOConfig):
    """``PPOConfig`` plus ``.distillation(...)``: two peer PPO learners that distil from each other.

    Example::

        config = (
            DPDConfig()
            .environment(PeerEnv, env_config={"env_id": "HalfCheetah-v5", "num_learners": 2})
            .multi_agent(policies={"learner_0", "learner_1"}, policy_mapping_fn=policy_mapping_fn)
            .distillation(alpha=1.0, weight=1.0, batch_size=256)
        )
        algo = config.build_algo()
    """

    def __init__(self, algo_class: type | None = None):
        super().__init__(algo_class=algo_class or DPD)
        self._distillation_defaults()

    def get_default_learner_class(self) -> type:
        return DPDTorchLearner

    def validate(self) -> None:
        super().validate()
        self._validate_distillation()


class DPD(PPO):
    """PPO whose learner adds the dual-policy-distillation term; configured by ``DPDConfig``."""

    @classmethod
    def get_default_config(cls) -> DPDConfig:
        return DPDConfig()


class DPDSACConfig(DistillationOptions, SACConfig):
    """``SACConfig`` plus ``.distillation(...)``: two peer SAC learners that distil from each other,
    with V(s) estimated from each learner's own critics. Multi-agent SAC on the new API stack needs
    an episode replay buffer for several modules, e.g.
    ``.training(replay_buffer_config={"type": "MultiAgentEpisodeReplayBuffer"})``."""

    def __init__(self, algo_class: type | None = None):
        super().__init__(algo_class=algo_class or DPDSAC)
        self._distillation_defaults()

    def get_default_learner_class(self) -> type:
        return DPDSACTorchLearner

    def validate(self) -> None:
        super().validate()
        self._validate_distillation()


class DPDSAC(SAC):
    """SAC whose learner adds the dual-policy-distillation term to each actor loss."""

    @classmethod
    def get_default_config(cls) -> DPDSACConfig:
        return DPDSACConfig()


def average_across_learners(grads: dict, params: dict) -> None:
    """Average ``grads`` (parameter id -> gradient or None) over all learner processes, in place, with
    one all-reduce of all gradients flattened in a fixed order (the same on every learner). A gradient
    that is None on some learners counts as zero there (``params`` gives its shape); one that is None
    on all of them stays None."""
    import torch.distributed as dist

    keys = sorted(grads, key=str)
    if not keys:
        return
    device = params[keys[0]].device
    present = torch.tensor([grads[k] is not None for k in keys], dtype=torch.float32, device=device)
    dist.all_reduce(present)
    keys = [k for k, n in zip(keys, present.tolist()) if n > 0]
    local = [grads[k] if grads[k] is not None else torch.zeros_like(params[k]) for k in keys]
    flat = torch.cat([g.reshape(-1) for g in local])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for k, g, avg in zip(keys, local, torch.split(flat, [g.numel() for g in local])):
        grads[k] = avg.view_as(g)


class PeerDistillationMixin:
    """Adds lambda * J(theta) to each peer's loss inside ``compute_losses`` (RLlib Learner mixin).

    Subclasses say what a state's action and value are for their algorithm: ``peer_states_and_actions``
    (the peer's states in this batch and its actions there, detached), ``policy_action`` (the own
    policy's action, differentiable) and ``state_value`` (V(s), no gradient; it is also handed the
    module's own deterministic action at those states, already computed, for critics that need one)."""

    def compute_losses(self, *, fwd_out: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
        losses = super().compute_losses(fwd_out=fwd_out, batch=batch)  # the RL loss of every module
        cfg = self.config
        if cfg.distill_weight == 0 or self._weights_seq_no % cfg.distill_interval != 0:
            return losses
        modules = sorted(m for m in fwd_out if m in batch)
        if len(modules) != 2:  # a peer is absent from this batch (or single-learner run): nothing to distil
            return losses
        for own, peer in ((modules[0], modules[1]), (modules[1], modules[0])):
            j = self.distillation_loss(own=own, peer=peer, fwd_out=fwd_out, batch=batch)
            self.add_distillation_term(own, cfg.distill_weight * j, losses)  # L = L_RL + lambda * J
        return losses

    def add_distillation_term(self, own: ModuleID, term: torch.Tensor, losses: dict[str, Any]) -> None:
        losses[own] = losses[own] + term

    # Several learner actors (num_learners > 1). RLlib wraps each peer module in its own DDP; with two
    # DDP reducers of identically shaped modules on one process group, the learners' copies of the
    # peers were seen to drift apart now and then, even with the distillation weight at 0 (a plain
    # one-module PPO stayed in sync). A likely cause: the two reducers' bucket all-reduces can pair
    # up across learners in different orders, which goes unnoticed because the shapes match. So DDP
    # keeps only its start-up broadcast of rank 0's weights, and the gradients are averaged here.
    def _make_modules_ddp_if_necessary(self) -> None:
        super()._make_modules_ddp_if_necessary()
        if self.config.num_learners > 1:
            for key in self._module.keys():
                if isinstance(self._module[key], torch.nn.parallel.DistributedDataParallel):
                    self._module[key].require_backward_grad_sync = False  # what DDP.no_sync() sets

    def compute_gradients(self, loss_per_module: dict[str, Any], **kwargs) -> dict:
        grads = super().compute_gradients(loss_per_module, **kwargs)
        if self.config.num_learners > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            average_across_learners(grads, self._params)
        return grads

    def distillation_loss(self, *, own: ModuleID, peer: ModuleID, fwd_out: dict[str, Any],
                          batch: dict[str, Any]) -> torch.Tensor:
        """J(theta) = E_{s ~ peer}[ w(s) * ||mu_theta(s) - mu~(s)||^2 ] on the peer's states in ``batch``."""
        cfg = self.config
        states, mu_peer = self.peer_states_and_actions(peer, fwd_out, batch)
        if states.shape[0] > cfg.distill_batch_size:
            idx = torch.randperm(states.shape[0], device=states.device)[: cfg.distill_batch_size]
            states, mu_peer = states[idx], mu_peer[idx]
        mu_own = self.policy_action(own, states)
        with torch.no_grad():
            # xi(s) = V~(s) - V(s)
            xi = self.state_value(peer, states, mu_peer.detach()) - self.state_value(own, states, mu_own.detach())
            w = disadvantage_weights(xi, cfg.distill_alpha, cfg.distill_xi_clip, cfg.distill_weight_clip)
        d = (mu_own - mu_peer.detach()).pow(2).sum(-1)  # D(pi_theta(s), pi~(s)) = ||mu_theta(s) - mu~(s)||^2
        j = (w * d).mean()

        self.metrics.log_dict(
            {DISTILL_LOSS_KEY: j, PEER_BETTER_KEY: (xi > 0).float().mean(), XI_MEAN_KEY: xi.mean()},
            key=own, window=1,
        )
        return j


class DPDTorchLearner(PeerDistillationMixin, PPOTorchLearner):
    """PPO learner whose per-module loss gets the peer-weighted distillation term J(theta)."""

    def peer_states_and_actions(self, peer: ModuleID, fwd_out: dict[str, Any],
                                batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        peer_batch = batch[peer]
        states, peer_inputs = peer_batch[Columns.OBS], fwd_out[peer][Columns.ACTION_DIST_INPUTS]
        if Columns.LOSS_MASK in peer_batch:  # drop the artificial bootstrap timesteps PPO appends
            mask = peer_batch[Columns.LOSS_MASK].bool()
            states, peer_inputs = states[mask], peer_inputs[mask]
        return states, gaussian_mean(peer_inputs).detach()  # mu~(s): the peer is the teacher here

    def policy_action(self, module_id: ModuleID, states: torch.Tensor) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        return gaussian_mean(module.forward_train({Columns.OBS: states})[Columns.ACTION_DIST_INPUTS])

    def state_value(self, module_id: ModuleID, states: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.module[module_id].unwrapped().compute_values({Columns.OBS: states})  # PPO's value head


def squashed_action(action_dist_inputs: torch.Tensor) -> torch.Tensor:
    """Deterministic action of RLlib's squashed Gaussian (SAC): tanh(mean), in the normalised [-1, 1]
    action space in which SAC's critics and replay buffer see actions."""
    return torch.tanh(gaussian_mean(action_dist_inputs))


class DPDSACTorchLearner(PeerDistillationMixin, SACTorchLearner):
    """SAC learner whose actor loss gets the peer-weighted distillation term J(theta); xi(s) compares
    the two learners' critics at their own deterministic actions."""

    def add_distillation_term(self, own: ModuleID, term: torch.Tensor, losses: dict[str, Any]) -> None:
        super().add_distillation_term(own, term, losses)
        # SAC steps each optimizer on its own loss: J belongs to the actor (policy) optimizer only
        key = (own, POLICY_LOSS_KEY)
        self._temp_losses[key] = self._temp_losses[key] + term

    def peer_states_and_actions(self, peer: ModuleID, fwd_out: dict[str, Any],
                                batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch[peer][Columns.OBS], squashed_action(fwd_out[peer][Columns.ACTION_DIST_INPUTS]).detach()

    def policy_action(self, module_id: ModuleID, states: torch.Tensor) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        return squashed_action(module.pi(module.pi_encoder({Columns.OBS: states})[ENCODER_OUT]))

    def state_value(self, module_id: ModuleID, states: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """V(s) = min over the twin critics of Q(s, mu(s)), mu(s) = tanh(mean(s)) the module's ``action``."""
        return self.module[module_id].unwrapped().compute_q_values({Columns.OBS: states, Columns.ACTIONS: action})
