"""The three BFN data types as one interface: training loss, NLL terms and n-step sampling.

BFN paper (Graves et al. 2023, arXiv 2308.07037): continuous data (Sec. 4, a point estimate from
noise prediction), discretised data (Sec. 5, a discretised normal over K bins), discrete data
(Sec. 6, a categorical over K classes). Each flow wraps the pure maths of deepgen/bfn with a
network and says, for one data type:
  prior_inputs(shape)       the prior input parameters the network reads (used to initialise it)
  train_loss(...)           L^inf per example in nats, for one draw of t and of the flow
  nll_terms(...)            per-example nats of L^inf (key "inf"), L^n for each n, and L^r ("recon")
  sample(...)               n steps of the sampler as one lax.scan with a t = 1 readout
The training step, evaluation protocol and modes in experiments/bfn/method.py are shared by all.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from deepgen.bfn import continuous, discrete, sampler
from deepgen.bfn import solver as bfn_solver

# (params, inputs, t_B, *, train, rng) -> the network's raw outputs.
NetworkFn = Callable[..., jax.Array]


def _expand(t_B: jax.Array, ndim: int) -> jax.Array:
    """t_B reshaped to broadcast against (B, *variable_shape)."""
    return t_B.reshape(t_B.shape + (1,) * (ndim - 1))


def _sum_variables(loss_BxD: jax.Array) -> jax.Array:
    """Sum a per-variable loss over every axis but the batch axis."""
    return jnp.sum(loss_BxD, axis=tuple(range(1, loss_BxD.ndim)))


def _step_draw(rng: jax.Array, batch: int, n: int) -> tuple[jax.Array, jax.Array]:
    """(i_B, t_B) with i ~ U{1, ..., n} and t = (i - 1)/n, as the official sample_t."""
    i_B = jax.random.randint(rng, (batch,), 1, n + 1).astype(jnp.float32)
    return i_B, (i_B - 1.0) / n


# A distinct fold-in value for the reconstruction term, apart from every n.
_RECON_FOLD = 2**31 - 1


class _Flow:
    """What the flows share: the draws of the NLL terms and the sampler's arguments.

    A flow provides train_loss, _discrete_time_loss(params, x_BxD, n, i_B, t_B, rng_flow, rng_y,
    num_samples) and _reconstruction_loss(params, x_BxD, t1_B, rng) (per-variable nats), and
    _sample(params, solver, **sample's arguments).
    """

    def nll_terms(
        self, params: Any, x_BxD: jax.Array, rng: jax.Array, *, n_steps, num_samples: int
    ) -> dict[str, jax.Array]:
        """Per-example nats: L^inf or L^n for each n (0 means L^inf), and L^r."""
        batch = x_BxD.shape[0]
        terms = {}
        for n in n_steps:
            rng_n = jax.random.fold_in(rng, n)
            if n == 0:
                terms["inf"] = self.train_loss(params, x_BxD, rng_n, train=False)
                continue
            rng_i, rng_flow, rng_y = jax.random.split(rng_n, 3)
            i_B, t_B = _step_draw(rng_i, batch, n)
            loss = self._discrete_time_loss(
                params, x_BxD, n, i_B, t_B, rng_flow, rng_y, num_samples
            )
            terms[str(n)] = _sum_variables(loss)
        rng_r = jax.random.fold_in(rng, _RECON_FOLD)
        t1_B = jnp.ones((batch,), jnp.float32)
        terms["recon"] = _sum_variables(self._reconstruction_loss(params, x_BxD, t1_B, rng_r))
        return terms

    def sample(
        self,
        params: Any,
        *,
        rng: jax.Array,
        batch_size: int,
        variable_shape: tuple[int, ...],
        n_steps: int,
        known_mask: jax.Array,
        known_values: jax.Array,
        solver: str = "bfn",
    ) -> tuple[jax.Array, jax.Array]:
        """(samples, the t = 1 output) of n steps; known positions are clamped.

        solver "bfn" is the paper's sampler; "sde1", "sde2", "ode1", "ode2" are BFN-Solver's
        first- and second-order SDE and ODE solvers (Xue et al. 2024, deepgen/bfn/solver.py).
        """
        return self._sample(
            params,
            solver,
            rng=rng,
            batch_size=batch_size,
            variable_shape=variable_shape,
            n_steps=n_steps,
            known_mask=known_mask,
            known_values=known_values,
        )


class DiscreteFlow(_Flow):
    """K classes (Sec. 6): theta on the simplex, beta(t) = beta(1) t^2, a categorical output."""

    batch_dtype = np.int32

    def __init__(self, family: Any, network: NetworkFn, config: ConfigDict):
        self.family = family
        self.network = network
        self.num_classes = int(family.num_classes)
        self.beta1 = float(config.bfn.beta1)

    def log_probs(self, params: Any, theta: jax.Array, t_B: jax.Array, *, train: bool, rng):
        """log p_O(. | theta; t), shape (B, *variable_shape, K)."""
        outputs = self.network(params, *self.family.model_inputs(theta, t_B), train=train, rng=rng)
        return self.family.log_probs(outputs)

    def prior_inputs(self, shape: tuple[int, ...]) -> jax.Array:
        """The uniform prior theta = 1/K."""
        return discrete.prior_theta(shape, self.num_classes)

    def train_loss(self, params: Any, x_BxD: jax.Array, rng: jax.Array, *, train: bool):
        """L^inf per example (nats, summed over variables) for one draw of t and theta."""
        rng_t, rng_flow, rng_net = jax.random.split(rng, 3)
        x_onehot = jax.nn.one_hot(x_BxD, self.num_classes, dtype=jnp.float32)
        t_B = jax.random.uniform(rng_t, (x_BxD.shape[0],), jnp.float32)
        t = _expand(t_B, x_BxD.ndim)
        theta = discrete.flow_sample(x_onehot, t, beta1=self.beta1, rng=rng_flow)
        probs = jnp.exp(self.log_probs(params, theta, t_B, train=train, rng=rng_net))
        return _sum_variables(discrete.continuous_time_loss(x_onehot, probs, t, beta1=self.beta1))

    def _discrete_time_loss(self, params, x_BxD, n, i_B, t_B, rng_flow, rng_y, num_samples):
        """L^n per variable for one draw of the step i (and of the flow at t = (i - 1) / n)."""
        x_onehot = jax.nn.one_hot(x_BxD, self.num_classes, dtype=jnp.float32)
        ndim = x_BxD.ndim
        theta = discrete.flow_sample(x_onehot, _expand(t_B, ndim), beta1=self.beta1, rng=rng_flow)
        log_probs = self.log_probs(params, theta, t_B, train=False, rng=rng_flow)
        return discrete.discrete_time_loss(
            x_onehot,
            log_probs,
            _expand(i_B, ndim),
            n_steps=n,
            beta1=self.beta1,
            rng=rng_y,
            num_samples=num_samples,
        )

    def _reconstruction_loss(self, params, x_BxD, t1_B, rng):
        """L^r per variable, from one draw of the flow at t = 1."""
        x_onehot = jax.nn.one_hot(x_BxD, self.num_classes, dtype=jnp.float32)
        theta1 = discrete.flow_sample(
            x_onehot, _expand(t1_B, x_BxD.ndim), beta1=self.beta1, rng=rng
        )
        log_probs1 = self.log_probs(params, theta1, t1_B, train=False, rng=rng)
        return discrete.reconstruction_loss(x_onehot, log_probs1)

    def _sample(self, params: Any, solver: str, **common) -> tuple[jax.Array, jax.Array]:
        """(class indices, p_O at t = 1 of shape ...xK)."""
        log_probs_fn = lambda theta, t_B, r: self.log_probs(params, theta, t_B, train=False, rng=r)
        common.update(num_classes=self.num_classes, beta1=self.beta1)
        if solver != "bfn":
            return bfn_solver.sample_discrete(log_probs_fn, solver=solver, **common)
        return sampler.sample_discrete(log_probs_fn, **common)


class ContinuousFlow(_Flow):
    """Data in [-1, 1] (Secs. 4-5): theta = (mu, rho), beta(t) = sigma1^(-2t) - 1.

    discretised=True: the network gives (mu_eps, ln sigma_eps) per variable and p_O is a normal
    integrated over K bins (Sec. 5); its mean is the point estimate of L^inf. discretised=False:
    the network predicts the noise eps_hat and p_O is a point mass at the clipped x_hat (Sec. 4);
    its reconstruction term puts N(x_hat, sigma) into the K bins as the official code does
    (sigma = sigma1 with 256 bins, 0.7 sigma1 with 16 bins), so both report a discrete NLL.
    """

    batch_dtype = np.float32

    def __init__(self, family: Any, network: NetworkFn, config: ConfigDict, *, discretised: bool):
        self.family = family
        self.network = network
        self.discretised = discretised
        self.sigma1 = float(config.bfn.sigma1)
        self.num_bins = int(config.bfn.num_bins)
        self.recon_sigma = self.sigma1 * (0.7 if self.num_bins == 16 else 1.0)

    def prior_inputs(self, shape: tuple[int, ...]) -> jax.Array:
        """The prior mean mu_0 = 0 (the network never sees rho, a function of t)."""
        return continuous.prior_params(shape)[0]

    def _outputs(self, params: Any, mu: jax.Array, t_B: jax.Array, *, train: bool, rng):
        """The network's raw outputs, float32, shape (B, *variable_shape, 1 or 2)."""
        out = self.network(params, *self.family.model_inputs(mu, t_B), train=train, rng=rng)
        return out.astype(jnp.float32)

    def probs(self, params: Any, mu: jax.Array, t_B: jax.Array, *, train: bool, rng) -> jax.Array:
        """Discretised model: p_O(k | theta; t), shape (B, *variable_shape, K)."""
        out = self._outputs(params, mu, t_B, train=train, rng=rng)
        t = _expand(t_B, mu.ndim)
        return continuous.discretised_output(
            mu, out[..., 0], out[..., 1], t, sigma1=self.sigma1, num_bins=self.num_bins
        )

    def x_hat(self, params: Any, mu: jax.Array, t_B: jax.Array, *, train: bool, rng) -> jax.Array:
        """Continuous model: the clipped data estimate from the predicted noise."""
        eps_hat = self._outputs(params, mu, t_B, train=train, rng=rng)[..., 0]
        return continuous.data_estimate(mu, eps_hat, _expand(t_B, mu.ndim), sigma1=self.sigma1)

    def _point_estimate(self, params, mu, t_B, *, train: bool, rng) -> jax.Array:
        """x_hat for L^inf: E[k_c] under p_O for the discretised model, else the data estimate."""
        if self.discretised:
            out = self._outputs(params, mu, t_B, train=train, rng=rng)
            mean, std = continuous.discretised_output_params(
                mu, out[..., 0], out[..., 1], _expand(t_B, mu.ndim), sigma1=self.sigma1
            )
            return continuous.discretised_normal_mean(mean, std, num_bins=self.num_bins)
        return self.x_hat(params, mu, t_B, train=train, rng=rng)

    def train_loss(self, params: Any, x_BxD: jax.Array, rng: jax.Array, *, train: bool):
        """L^inf per example (nats, summed over variables) for one draw of t and mu."""
        rng_t, rng_flow, rng_net = jax.random.split(rng, 3)
        t_B = jax.random.uniform(rng_t, (x_BxD.shape[0],), jnp.float32)
        t = _expand(t_B, x_BxD.ndim)
        mu = continuous.flow_sample(x_BxD, t, sigma1=self.sigma1, rng=rng_flow)
        x_hat = self._point_estimate(params, mu, t_B, train=train, rng=rng_net)
        return _sum_variables(continuous.continuous_time_loss(x_BxD, x_hat, t, sigma1=self.sigma1))

    def _discrete_time_loss(self, params, x_BxD, n, i_B, t_B, rng_flow, rng_y, num_samples):
        """L^n per variable for one draw of the step i (and of the flow at t = (i - 1) / n)."""
        ndim = x_BxD.ndim
        i = _expand(i_B, ndim)
        mu = continuous.flow_sample(x_BxD, _expand(t_B, ndim), sigma1=self.sigma1, rng=rng_flow)
        if self.discretised:
            probs = self.probs(params, mu, t_B, train=False, rng=rng_flow)
            return continuous.discrete_time_loss_discretised(
                x_BxD,
                probs,
                i,
                n_steps=n,
                sigma1=self.sigma1,
                rng=rng_y,
                num_samples=num_samples,
            )
        x_hat = self.x_hat(params, mu, t_B, train=False, rng=rng_flow)
        return continuous.discrete_time_loss_point(x_BxD, x_hat, i, n_steps=n, sigma1=self.sigma1)

    def _reconstruction_loss(self, params, x_BxD, t1_B, rng):
        """L^r per variable, from one draw of the flow at t = 1."""
        mu1 = continuous.flow_sample(x_BxD, _expand(t1_B, x_BxD.ndim), sigma1=self.sigma1, rng=rng)
        if self.discretised:
            out = self._outputs(params, mu1, t1_B, train=False, rng=rng)
            mean, std = continuous.discretised_output_params(
                mu1, out[..., 0], out[..., 1], _expand(t1_B, mu1.ndim), sigma1=self.sigma1
            )
            return continuous.reconstruction_loss_discretised_exact(
                x_BxD, mean, std, num_bins=self.num_bins
            )
        x_hat1 = self.x_hat(params, mu1, t1_B, train=False, rng=rng)
        return continuous.reconstruction_loss_continuous(
            x_BxD, x_hat1, sigma=self.recon_sigma, num_bins=self.num_bins
        )

    def _sample(self, params: Any, solver: str, **common) -> tuple[jax.Array, jax.Array]:
        """(samples in [-1, 1], the t = 1 output: p_O ...xK if discretised, else x_hat)."""
        common["sigma1"] = self.sigma1
        if solver != "bfn":
            return self._solver_sample(params, solver=solver, **common)
        if self.discretised:

            def output_fn(mu, t_B, r):
                out = self._outputs(params, mu, t_B, train=False, rng=r)
                return out[..., 0], out[..., 1]

            return sampler.sample_discretised(output_fn, num_bins=self.num_bins, **common)

        def eps_fn(mu, t_B, r):
            return self._outputs(params, mu, t_B, train=False, rng=r)[..., 0]

        x_hat = sampler.sample_continuous(eps_fn, **common)
        # The point model's samples are its final estimates, quantised to the data's bins.
        return continuous.quantise(x_hat, self.num_bins), x_hat

    def _solver_sample(self, params: Any, *, solver: str, rng: jax.Array, **common):
        """BFN-Solver on the point estimate x_hat (E[k_c] for the discretised model), then t = 1."""
        batch_size = common["batch_size"]
        known_mask, known_values = common["known_mask"], common["known_values"]
        x_hat_fn = lambda mu, t_B, r: self._point_estimate(params, mu, t_B, train=False, rng=r)
        mu = bfn_solver.integrate_continuous(x_hat_fn, rng=rng, solver=solver, **common)
        t1_B = jnp.ones((batch_size,), jnp.float32)
        rng1 = jax.random.fold_in(rng, common["n_steps"] + 1)
        if self.discretised:
            probs = self.probs(params, mu, t1_B, train=False, rng=rng1)
            centres = continuous.bin_centres(self.num_bins)[jnp.argmax(probs, axis=-1)]
            return jnp.where(known_mask, known_values, centres), probs
        x_hat = self.x_hat(params, mu, t1_B, train=False, rng=rng1)
        x_hat = jnp.where(known_mask, known_values, x_hat)
        return continuous.quantise(x_hat, self.num_bins), x_hat


def make_flow(family: Any, network: NetworkFn, config: ConfigDict):
    """The flow for the family's data type: 'discrete', 'discretised' or 'continuous'."""
    kind = family.data_type
    if kind == "discrete":
        return DiscreteFlow(family, network, config)
    return ContinuousFlow(family, network, config, discretised=kind == "discretised")
