"""The LSTM learner of Graves et al. 2017, its sequence losses, and its variational weights.

"Automated Curriculum Learning for Neural Networks" (arXiv 1704.03003), Sec. 5: every curriculum
trains an LSTM; the loss L(x, theta) is the negative log-likelihood of a sequence's scored
targets (summed over its time steps, nats), softmax outputs for characters and words, Bernoulli
outputs for the bits of repeat copy. Sec. 3.2 (complexity gain) trains the same network with
a stochastic variational posterior over its weights, P_phi = N(mu, sigma^2) diagonal, and an
adaptive prior Q_psi: one Gaussian N(mu_psi, sigma_psi^2) shared by all weights whose parameters
take their closed-form optimum given phi (Graves 2011, "Practical Variational Inference for
Neural Networks", Sec. 5):

    mu_psi = mean_i mu_i,   sigma_psi^2 = mean_i [sigma_i^2 + (mu_i - mu_psi)^2],

so that KL(P_phi || Q_psi) = W log sigma_psi - sum_i log sigma_i (W weights). The loss minimised
is the MDL / variational loss  E_{theta ~ P_phi} L(x, theta) + KL(P_phi || Q_psi) / S, where S is
the number of training sequences the code length is shared among.

The bandit only needs `apply(params, inputs) -> logits`: besides the paper's LSTM, SnapCellNet
wraps the (sparse) recurrent cells of deepgen.snap as a second learner.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.snap import cells

LIKELIHOODS = ("categorical", "bernoulli")
NETWORKS = ("lstm", "snap_cell")


class LSTMNet(nn.Module):
    """One LSTM layer and a linear read-out: inputs (B, T, I) -> logits (B, T, O)."""

    hidden_size: int
    output_size: int
    forget_bias: float = 1.0

    @nn.compact
    def __call__(self, inputs_BxTxI: jax.Array) -> jax.Array:
        hidden = self.hidden_size
        num_inputs = inputs_BxTxI.shape[-1]
        w_in_Ix4H = self.param(
            "w_in",
            nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
            (num_inputs, 4 * hidden),
        )
        w_rec_Hx4H = self.param("w_rec", nn.initializers.orthogonal(), (hidden, 4 * hidden))
        bias_4H = self.param("bias", nn.initializers.zeros, (4 * hidden,))
        # Input projections of every time step at once; only the recurrence is sequential.
        pre_TxBx4H = jnp.einsum("bti,ih->tbh", inputs_BxTxI, w_in_Ix4H) + bias_4H
        forget_shift_4H = jnp.zeros((4 * hidden,)).at[hidden : 2 * hidden].set(self.forget_bias)
        pre_TxBx4H = pre_TxBx4H + forget_shift_4H

        def step(carry, pre_Bx4H):
            h_BxH, c_BxH = carry
            gates_Bx4H = pre_Bx4H + h_BxH @ w_rec_Hx4H
            i, f, g, o = jnp.split(gates_Bx4H, 4, axis=-1)
            c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_BxH = jax.nn.sigmoid(o) * jnp.tanh(c_BxH)
            return (h_BxH, c_BxH), h_BxH

        batch = inputs_BxTxI.shape[0]
        zeros_BxH = jnp.zeros((batch, hidden), pre_TxBx4H.dtype)
        _, h_TxBxH = jax.lax.scan(step, (zeros_BxH, zeros_BxH), pre_TxBx4H)
        return nn.Dense(self.output_size, name="readout")(jnp.swapaxes(h_TxBxH, 0, 1))


@dataclasses.dataclass(frozen=True, eq=False)
class SnapCellNet:
    """A second learner: a SnAp cell (deepgen.snap.cells; dense or sparse) and a linear read-out.

    The curriculum trains it by backpropagation through each sequence; its fixed sparsity masks
    are part of the network, not of the parameters, so masked weights stay zero (their gradient
    is zero) under maximum-likelihood and variational training alike.
    """

    cell: cells.CellConfig
    output_size: int
    masks: Any  # {w_x, w_h}: fixed 0/1 masks from cells.init_cell
    biases: Any  # the cell's initial biases (the LSTM's forget bias at 1)

    def init(self, rng: jax.Array) -> Any:
        """Masked N(0, 1 / kept fan-in) cell weights, the cell's biases, a normal read-out."""
        keys = jax.random.split(rng, 3)
        fan_in = {"w_x": self.cell.input_size, "w_h": self.cell.hidden_size}
        cell_params = dict(self.biases)
        for key, name in zip(keys[:2], ("w_x", "w_h"), strict=True):
            mask = self.masks[name]
            scale = 1.0 / jnp.sqrt(max(1.0, self.cell.density * fan_in[name]))
            cell_params[name] = jax.random.normal(key, mask.shape) * scale * mask
        hidden = self.cell.hidden_size
        readout = {
            "w": jax.random.normal(keys[2], (hidden, self.output_size)) / jnp.sqrt(hidden),
            "b": jnp.zeros((self.output_size,)),
        }
        return {"cell": cell_params, "readout": readout}

    def apply(self, params: Any, inputs_BxTxI: jax.Array) -> jax.Array:
        """inputs (B, T, I) -> logits (B, T, O), the cell stepped over time for every sequence."""

        def run(inputs_TxI):
            def step(state_S, x_I):
                state_S = cells.cell_step(self.cell, params["cell"], self.masks, state_S, x_I)
                return state_S, cells.hidden(self.cell, state_S)

            _, h_TxK = jax.lax.scan(step, cells.initial_state(self.cell), inputs_TxI)
            return h_TxK @ params["readout"]["w"] + params["readout"]["b"]

        return jax.vmap(run)(inputs_BxTxI)


def make_snap_cell_net(
    kind: str,
    *,
    input_size: int,
    hidden_size: int,
    output_size: int,
    density: float,
    rng: jax.Array,
) -> SnapCellNet:
    """A SnapCellNet whose masks are drawn from rng (the same rng gives the same masks)."""
    config = cells.CellConfig(kind, input_size, hidden_size, density=density)
    params, masks = cells.init_cell(config, rng)  # numpy masks: rng must be concrete here
    biases = {name: value for name, value in params.items() if name.startswith("b")}
    return SnapCellNet(config, output_size, masks, biases)


def sequence_nll_B(
    logits_BxTxO: jax.Array, targets: jax.Array, weights_BxT: jax.Array, *, likelihood: str
) -> jax.Array:
    """-log p of each sequence's scored targets, summed over time (nats), shape (B,)."""
    if likelihood == "categorical":
        log_probs_BxTxO = jax.nn.log_softmax(logits_BxTxO.astype(jnp.float32))
        nll_BxT = -jnp.take_along_axis(log_probs_BxTxO, targets[..., None], axis=-1)[..., 0]
    elif likelihood == "bernoulli":
        logits = logits_BxTxO.astype(jnp.float32)
        # -[y log s(l) + (1 - y) log(1 - s(l))] = softplus(l) - y l, summed over the channels.
        nll_BxT = jnp.sum(jax.nn.softplus(logits) - targets * logits, axis=-1)
    else:
        raise ValueError(f"likelihood {likelihood!r} is not one of {LIKELIHOODS}")
    return jnp.sum(nll_BxT * weights_BxT, axis=-1)


def correct_B(logits_BxTxO: jax.Array, targets: jax.Array, weights_BxT: jax.Array) -> jax.Array:
    """Scored categorical targets predicted exactly by the argmax, per sequence, shape (B,)."""
    hit_BxT = (jnp.argmax(logits_BxTxO, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(hit_BxT * weights_BxT, axis=-1)


class Posterior(NamedTuple):
    """P_phi: the mean of every weight and the log of its standard deviation (same pytrees)."""

    mean: Any
    log_sigma: Any


def init_posterior(params: Any, *, init_sigma: float) -> Posterior:
    """Means at the deterministic initialisation, every sigma at init_sigma."""
    log_sigma = jax.tree.map(lambda p: jnp.full_like(p, jnp.log(init_sigma)), params)
    return Posterior(params, log_sigma)


def sample_weights(posterior: Posterior, rng: jax.Array) -> Any:
    """theta = mu + sigma * noise, one draw of every weight (the reparameterisation)."""
    leaves, treedef = jax.tree.flatten(posterior.mean)
    keys = jax.random.split(rng, len(leaves))
    noise = jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, leaf.shape, leaf.dtype)
            for k, leaf in zip(keys, leaves, strict=False)
        ],
    )
    return jax.tree.map(
        lambda m, s, e: m + jnp.exp(s) * e, posterior.mean, posterior.log_sigma, noise
    )


def _leaf_sum(function, *trees: Any) -> jax.Array:
    """sum over the leaves of sum(function(leaf, ...)), without concatenating the leaves."""
    return sum(
        jnp.sum(function(*leaves)) for leaves in zip(*map(jax.tree.leaves, trees), strict=True)
    )


def adaptive_prior(posterior: Posterior) -> tuple[jax.Array, jax.Array]:
    """(mu_psi, sigma_psi^2): the single Gaussian prior that minimises KL(P_phi || Q_psi)."""
    num_weights = sum(leaf.size for leaf in jax.tree.leaves(posterior.mean))
    prior_mean = _leaf_sum(lambda m: m, posterior.mean) / num_weights
    second_moment = _leaf_sum(
        lambda m, s: jnp.exp(2.0 * s) + (m - prior_mean) ** 2, posterior.mean, posterior.log_sigma
    )
    return prior_mean, second_moment / num_weights


def gaussian_kl(
    posterior: Posterior, prior_mean: jax.Array, prior_variance: jax.Array
) -> jax.Array:
    """KL(N(mu, sigma^2) || N(mu_psi, sigma_psi^2)) summed over every weight (nats)."""

    def per_weight(mean, log_sigma):
        variance = jnp.exp(2.0 * log_sigma)
        return (
            0.5 * jnp.log(prior_variance)
            - log_sigma
            + (variance + (mean - prior_mean) ** 2) / (2.0 * prior_variance)
            - 0.5
        )

    return _leaf_sum(per_weight, posterior.mean, posterior.log_sigma)


def complexity(posterior: Posterior) -> jax.Array:
    """The model complexity KL(P_phi || Q_psi) at the adaptive prior's optimum (nats)."""
    prior_mean, prior_variance = adaptive_prior(posterior)
    return gaussian_kl(posterior, prior_mean, prior_variance)


def squared_norm(tree: Any) -> jax.Array:
    """||theta||^2 over every leaf of a pytree."""
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def tree_dot(a: Any, b: Any) -> jax.Array:
    """The inner product of two pytrees of the same structure."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=False))
