"""Value and actor-critic networks for NoisyNet agents (arXiv:1706.10295, Sec. 3.1 and App. A).

All dense layers of the heads are noisy when `noisy` is set (the paper makes every fully connected
layer noisy; convolutions stay deterministic). Torsos: an MLP for CartPole-like vector
observations, the MinAtar conv (16 3x3 filters, Young & Tian 2019) and the Nature DQN CNN.
The dueling head combines V and A as Q = V + A - mean_a A (Wang et al. 2016, Eq. 9).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from deepgen.noisynet.layers import NoisyDense

TORSOS = ("mlp", "minatar", "nature")


class _Dense(nn.Module):
    """A NoisyDense when noisy, else an nn.Dense; takes the noise switches either way."""

    features: int
    noisy: bool
    noise_type: str
    sigma0: float | None

    @nn.compact
    def __call__(self, x: jax.Array, *, use_noise: bool, per_example_noise: bool) -> jax.Array:
        if self.noisy:
            layer = NoisyDense(self.features, noise_type=self.noise_type, sigma0=self.sigma0)
            return layer(x, use_noise=use_noise, per_example_noise=per_example_noise)
        return nn.Dense(self.features)(x)


class Torso(nn.Module):
    """Observation encoder: "mlp" (dense layers), "minatar" (one conv) or "nature" (three convs)."""

    kind: str
    hidden: Sequence[int] = (64,)
    noisy: bool = False
    noise_type: str = "factorised"
    sigma0: float | None = None

    @nn.compact
    def __call__(self, obs: jax.Array, *, use_noise: bool, per_example_noise: bool) -> jax.Array:
        if self.kind == "mlp":
            x = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
            for width in self.hidden:
                layer = _Dense(width, self.noisy, self.noise_type, self.sigma0)
                x = nn.relu(layer(x, use_noise=use_noise, per_example_noise=per_example_noise))
            return x
        if self.kind == "minatar":
            x = nn.relu(nn.Conv(16, (3, 3), padding="VALID")(obs.astype(jnp.float32)))
            return x.reshape(x.shape[0], -1)
        if self.kind == "nature":
            x = obs.astype(jnp.float32) / 255.0
            x = nn.relu(nn.Conv(32, (8, 8), strides=(4, 4), padding="VALID")(x))
            x = nn.relu(nn.Conv(64, (4, 4), strides=(2, 2), padding="VALID")(x))
            x = nn.relu(nn.Conv(64, (3, 3), strides=(1, 1), padding="VALID")(x))
            return x.reshape(x.shape[0], -1)
        raise ValueError(f"torso {self.kind!r} is not one of {TORSOS}")


class QNetwork(nn.Module):
    """Q-values q_BxA: torso, then a (noisy) hidden layer and output, or two dueling streams."""

    num_actions: int
    torso: str
    torso_hidden: Sequence[int]
    head_hidden: int
    dueling: bool = False
    noisy: bool = False
    noisy_torso: bool = True
    noise_type: str = "factorised"
    sigma0: float | None = None

    @nn.compact
    def __call__(
        self, obs: jax.Array, *, use_noise: bool = True, per_example_noise: bool = False
    ) -> jax.Array:
        kw = dict(use_noise=use_noise and self.noisy, per_example_noise=per_example_noise)
        dense = dict(noisy=self.noisy, noise_type=self.noise_type, sigma0=self.sigma0)
        torso_noisy = self.noisy and self.noisy_torso
        x = Torso(
            self.torso, self.torso_hidden, torso_noisy, self.noise_type, self.sigma0, name="torso"
        )(obs, **kw)

        def stream(out: int, name: str) -> jax.Array:
            h = nn.relu(_Dense(self.head_hidden, name=f"{name}_hidden", **dense)(x, **kw))
            return _Dense(out, name=f"{name}_out", **dense)(h, **kw)

        if not self.dueling:
            return stream(self.num_actions, "q")
        value_Bx1 = stream(1, "value")
        advantage_BxA = stream(self.num_actions, "advantage")
        return value_Bx1 + advantage_BxA - jnp.mean(advantage_BxA, axis=-1, keepdims=True)


class ActorCritic(nn.Module):
    """Policy logits_BxA and value_B from a shared torso and two (noisy) heads."""

    num_actions: int
    torso: str
    torso_hidden: Sequence[int]
    head_hidden: int
    noisy: bool = False
    noisy_torso: bool = True
    noise_type: str = "independent"
    sigma0: float | None = None

    @nn.compact
    def __call__(
        self, obs: jax.Array, *, use_noise: bool = True, per_example_noise: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        kw = dict(use_noise=use_noise and self.noisy, per_example_noise=per_example_noise)
        dense = dict(noisy=self.noisy, noise_type=self.noise_type, sigma0=self.sigma0)
        torso_noisy = self.noisy and self.noisy_torso
        x = Torso(
            self.torso, self.torso_hidden, torso_noisy, self.noise_type, self.sigma0, name="torso"
        )(obs, **kw)
        h = nn.relu(_Dense(self.head_hidden, name="shared_hidden", **dense)(x, **kw))
        logits_BxA = _Dense(self.num_actions, name="policy", **dense)(h, **kw)
        value_B = _Dense(1, name="value", **dense)(h, **kw)[..., 0]
        return logits_BxA, value_B


def _sigma0(config: ConfigDict) -> float | None:
    sigma0 = config.agent.get("sigma0", None)
    return None if sigma0 is None or sigma0 <= 0 else float(sigma0)


def make_q_network(config: ConfigDict, num_actions: int) -> QNetwork:
    """The Q network for config.agent.name "dqn" or "dueling" (dueling streams)."""
    net = config.network
    return QNetwork(
        num_actions=num_actions,
        torso=net.torso,
        torso_hidden=tuple(net.torso_hidden),
        head_hidden=int(net.head_hidden),
        dueling=config.agent.name == "dueling",
        noisy=bool(config.agent.noisy),
        noisy_torso=bool(net.noisy_torso),
        noise_type=config.agent.noise_type,
        sigma0=_sigma0(config),
    )


def make_actor_critic(config: ConfigDict, num_actions: int) -> ActorCritic:
    """The actor-critic network for config.agent.name "a2c"."""
    net = config.network
    return ActorCritic(
        num_actions=num_actions,
        torso=net.torso,
        torso_hidden=tuple(net.torso_hidden),
        head_hidden=int(net.head_hidden),
        noisy=bool(config.agent.noisy),
        noisy_torso=bool(net.noisy_torso),
        noise_type=config.agent.noise_type,
        sigma0=_sigma0(config),
    )
