"""Value and actor-critic networks for NoisyNet agents (arXiv:1706.10295, Sec. 3.1 and App. A).

All dense layers of the heads are noisy when `noisy` is set (the paper makes every fully connected
layer noisy; convolutions stay deterministic). Torsos: an MLP for CartPole-like vector
observations, the MinAtar conv (16 3x3 filters, Young & Tian 2019) and the Nature DQN CNN.
The dueling head combines V and A as Q = V + A - mean_a A (Wang et al. 2016, Eq. 9).
A noisy forward pass draws the noise of all its noisy layers with ONE normal draw from the "noise"
rng stream and splits it over the layers: on CPU each draw has a fixed cost far above that of
these small layers, so one draw per pass instead of one per layer is most of what NoisyNet costs.
"""

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from deepgen.noisynet.layers import NoisyDense, noise_size

TORSOS = ("mlp", "minatar", "nature")


class _Dense(nn.Module):
    """A NoisyDense when noisy, else an nn.Dense; takes the noise switches either way."""

    features: int
    noisy: bool
    noise_type: str
    sigma0: float | None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        use_noise: bool,
        per_example_noise: bool,
        noise: jax.Array | None = None,
    ) -> jax.Array:
        if self.noisy:
            layer = NoisyDense(self.features, noise_type=self.noise_type, sigma0=self.sigma0)
            return layer(x, use_noise=use_noise, per_example_noise=per_example_noise, noise=noise)
        return nn.Dense(self.features)(x)


def draw_layer_noise(
    module: nn.Module,
    layer_dims: Sequence[tuple[int, int]],
    noise_type: str,
    batch_shape: tuple[int, ...],
    dtype=jnp.float32,
) -> list[jax.Array]:
    """N(0, 1) noise for noisy layers (fan_in, features), from one draw of module's "noise" rng."""
    sizes = [noise_size(noise_type, fan_in, out) for fan_in, out in layer_dims]
    flat = jax.random.normal(module.make_rng("noise"), (*batch_shape, sum(sizes)), dtype)
    return jnp.split(flat, np.cumsum(sizes)[:-1].tolist(), axis=-1)


def split_layer_noise(
    noise: jax.Array, layer_dims: Sequence[tuple[int, int]], noise_type: str
) -> list[jax.Array]:
    """A pre-drawn flat N(0, 1) array (*batch, total) split over the layers (fan_in, features)."""
    sizes = [noise_size(noise_type, fan_in, out) for fan_in, out in layer_dims]
    if noise.shape[-1] != sum(sizes):
        raise ValueError(
            f"pre-drawn noise has {noise.shape[-1]} entries, the network needs {sum(sizes)}"
        )
    return jnp.split(noise, np.cumsum(sizes)[:-1].tolist(), axis=-1)


def network_noise_size(params: Any, noise_type: str) -> int:
    """Normal draws one noise sample of a network needs: the sum over its NoisyDense layers."""
    if isinstance(params, Mapping):
        if "mu_w" in params and "sigma_w" in params:
            return noise_size(noise_type, *params["mu_w"].shape)
        return sum(network_noise_size(child, noise_type) for child in params.values())
    return 0


def _mlp_dims(obs: jax.Array, hidden: Sequence[int]) -> list[tuple[int, int]]:
    """(fan_in, features) of the dense layers of the "mlp" torso."""
    widths = [int(np.prod(obs.shape[1:])), *hidden]
    return list(itertools.pairwise(widths))


class Torso(nn.Module):
    """Observation encoder: "mlp" (dense layers), "minatar" (one conv) or "nature" (three convs)."""

    kind: str
    hidden: Sequence[int] = (64,)
    noisy: bool = False
    noise_type: str = "factorised"
    sigma0: float | None = None

    @nn.compact
    def __call__(
        self,
        obs: jax.Array,
        *,
        use_noise: bool,
        per_example_noise: bool,
        noise: Sequence[jax.Array] | None = None,
    ) -> jax.Array:
        """noise: pre-drawn noise for the "mlp" layers (see draw_layer_noise); else drawn per layer."""
        if self.kind == "mlp":
            x = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
            for i, width in enumerate(self.hidden):
                layer = _Dense(width, self.noisy, self.noise_type, self.sigma0)
                x = layer(
                    x,
                    use_noise=use_noise,
                    per_example_noise=per_example_noise,
                    noise=None if noise is None else noise[i],
                )
                x = nn.relu(x)
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


def _torso_and_head_noise(
    module: nn.Module,
    torso: Torso,
    obs: jax.Array,
    head_dims: Callable[[int], list[tuple[int, int]]],
    *,
    use_noise: bool,
    per_example_noise: bool,
    noise: jax.Array | None,
) -> tuple[jax.Array, list[jax.Array] | None]:
    """Torso features and the heads' noise, all noise of the pass drawn at once (None: no noise)."""
    kw = dict(use_noise=use_noise, per_example_noise=per_example_noise)
    batch_shape = obs.shape[:1] if per_example_noise else ()

    def layer_noise(dims: list[tuple[int, int]]) -> list[jax.Array]:
        if noise is not None:
            return split_layer_noise(noise, dims, torso.noise_type)
        return draw_layer_noise(module, dims, torso.noise_type, batch_shape)

    if torso.kind == "mlp":  # the layer sizes are known before the torso runs
        torso_dims = _mlp_dims(obs, torso.hidden) if torso.noisy else []
        feature_dim = torso.hidden[-1] if torso.hidden else int(np.prod(obs.shape[1:]))
        dims = torso_dims + head_dims(feature_dim)
        if not use_noise:
            return torso(obs, **kw), None
        per_layer = layer_noise(dims)
        x = torso(obs, **kw, noise=per_layer[: len(torso_dims)])
        return x, per_layer[len(torso_dims) :]
    x = torso(obs, **kw)  # convolutions: deterministic
    if not use_noise:
        return x, None
    return x, layer_noise(head_dims(x.shape[-1]))


class _TorsoAndHeads(nn.Module):
    """A torso, then (noisy) dense heads: the fields and forward pass QNetwork and ActorCritic share."""

    num_actions: int
    torso: str
    torso_hidden: Sequence[int]
    head_hidden: int
    noisy: bool = False
    noisy_torso: bool = True
    noise_type: str = "factorised"
    sigma0: float | None = None

    def _head_dims(self, feature_dim: int) -> list[tuple[int, int]]:
        """(fan_in, features) of the heads' dense layers, in the order they take their noise."""
        raise NotImplementedError

    def _heads(self, x: jax.Array, noise: list[jax.Array] | None, switches: dict) -> Any:
        """The network's outputs from the torso features and the heads' noise (None: no noise)."""
        raise NotImplementedError

    def _dense(self, features: int, name: str) -> _Dense:
        """A head layer, noisy when the network is."""
        return _Dense(features, self.noisy, self.noise_type, self.sigma0, name=name)

    @nn.compact
    def __call__(
        self,
        obs: jax.Array,
        *,
        use_noise: bool = True,
        per_example_noise: bool = False,
        noise: jax.Array | None = None,
    ) -> Any:
        """noise: a pre-drawn N(0, 1) sample (network_noise_size entries, per row if per-example)."""
        switches = dict(use_noise=use_noise and self.noisy, per_example_noise=per_example_noise)
        torso_noisy = self.noisy and self.noisy_torso
        torso = Torso(
            self.torso, self.torso_hidden, torso_noisy, self.noise_type, self.sigma0, name="torso"
        )
        x, head_noise = _torso_and_head_noise(
            self, torso, obs, self._head_dims, **switches, noise=noise
        )
        return self._heads(x, head_noise, switches)


class QNetwork(_TorsoAndHeads):
    """Q-values q_BxA: torso, then a (noisy) hidden layer and output, or two dueling streams."""

    dueling: bool = False

    def _streams(self) -> list[tuple[str, int]]:
        """(name, outputs) of each head: one Q stream, or the dueling value and advantage."""
        if self.dueling:
            return [("value", 1), ("advantage", self.num_actions)]
        return [("q", self.num_actions)]

    def _head_dims(self, feature_dim: int) -> list[tuple[int, int]]:
        dims = []
        for _, out in self._streams():
            dims += [(feature_dim, self.head_hidden), (self.head_hidden, out)]
        return dims

    def _heads(self, x: jax.Array, noise: list[jax.Array] | None, switches: dict) -> jax.Array:
        outputs = []
        for i, (name, out) in enumerate(self._streams()):
            hidden_noise, out_noise = (None, None) if noise is None else noise[2 * i : 2 * i + 2]
            h = self._dense(self.head_hidden, f"{name}_hidden")(x, **switches, noise=hidden_noise)
            outputs.append(self._dense(out, f"{name}_out")(nn.relu(h), **switches, noise=out_noise))
        if not self.dueling:
            return outputs[0]
        value_Bx1, advantage_BxA = outputs
        return value_Bx1 + advantage_BxA - jnp.mean(advantage_BxA, axis=-1, keepdims=True)


class ActorCritic(_TorsoAndHeads):
    """Policy logits_BxA and value_B from a shared torso and two (noisy) heads."""

    noise_type: str = "independent"

    def _head_dims(self, feature_dim: int) -> list[tuple[int, int]]:
        hidden = self.head_hidden
        return [(feature_dim, hidden), (hidden, self.num_actions), (hidden, 1)]

    def _heads(
        self, x: jax.Array, noise: list[jax.Array] | None, switches: dict
    ) -> tuple[jax.Array, jax.Array]:
        shared_noise, policy_noise, value_noise = [None] * 3 if noise is None else noise
        h = nn.relu(
            self._dense(self.head_hidden, "shared_hidden")(x, **switches, noise=shared_noise)
        )
        logits_BxA = self._dense(self.num_actions, "policy")(h, **switches, noise=policy_noise)
        value_B = self._dense(1, "value")(h, **switches, noise=value_noise)[..., 0]
        return logits_BxA, value_B


def _sigma0(config: ConfigDict) -> float | None:
    sigma0 = config.agent.get("sigma0", None)
    return None if sigma0 is None or sigma0 <= 0 else float(sigma0)


def _network_fields(config: ConfigDict, num_actions: int) -> dict[str, Any]:
    """The fields QNetwork and ActorCritic share, from config.network and config.agent."""
    net = config.network
    return dict(
        num_actions=num_actions,
        torso=net.torso,
        torso_hidden=tuple(net.torso_hidden),
        head_hidden=int(net.head_hidden),
        noisy=bool(config.agent.noisy),
        noisy_torso=bool(net.noisy_torso),
        noise_type=config.agent.noise_type,
        sigma0=_sigma0(config),
    )


def make_q_network(config: ConfigDict, num_actions: int) -> QNetwork:
    """The Q network for config.agent.name "dqn" or "dueling" (dueling streams)."""
    return QNetwork(**_network_fields(config, num_actions), dueling=config.agent.name == "dueling")


def make_actor_critic(config: ConfigDict, num_actions: int) -> ActorCritic:
    """The actor-critic network for config.agent.name "a2c"."""
    return ActorCritic(**_network_fields(config, num_actions))
