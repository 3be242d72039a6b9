"""The noisy linear layer of NoisyNet (Fortunato et al., arXiv:1706.10295, Sec. 3, Eqs. 9-11).

y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b. Independent noise draws every eps_w[i, j]
and eps_b[j] from N(0, 1); factorised noise draws p input noises and q output noises and uses
eps_w[i, j] = f(eps_i) f(eps_j), eps_b[j] = f(eps_j) with f(x) = sgn(x) sqrt(|x|) (Eqs. 10-11).
The factorised path computes ((x * f(eps_in)) @ sigma_w) * f(eps_out), so the p x q noise matrix is
never formed. Initialisation follows Sec. 3.2: factorised mu ~ U[-1/sqrt(p), 1/sqrt(p)],
sigma = sigma0 / sqrt(p) (sigma0 = 0.5); independent mu ~ U[-sqrt(3/p), sqrt(3/p)], sigma = 0.017.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

NOISE_TYPES = ("factorised", "independent")
DEFAULT_SIGMA0 = {"factorised": 0.5, "independent": 0.017}


def signed_sqrt(x: jax.Array) -> jax.Array:
    """f(x) = sgn(x) sqrt(|x|), the factorised-noise transform (Eq. 10)."""
    return jnp.sign(x) * jnp.sqrt(jnp.abs(x))


def initial_mu_bound(noise_type: str, fan_in: int) -> float:
    """Half-width of the uniform mu initialiser (Sec. 3.2)."""
    if noise_type == "factorised":
        return 1.0 / math.sqrt(fan_in)
    return math.sqrt(3.0 / fan_in)


def initial_sigma(noise_type: str, fan_in: int, sigma0: float) -> float:
    """The constant sigma initial value: sigma0 / sqrt(p) (factorised) or sigma0 itself (independent)."""
    if noise_type == "factorised":
        return sigma0 / math.sqrt(fan_in)
    return sigma0


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class NoisyDense(nn.Module):
    """A dense layer with learnable Gaussian parameter noise; noise comes from the "noise" rng stream."""

    features: int
    noise_type: str = "factorised"
    sigma0: float | None = None
    use_bias: bool = True

    @nn.compact
    def __call__(
        self, x_BxP: jax.Array, *, use_noise: bool = True, per_example_noise: bool = False
    ) -> jax.Array:
        """use_noise=False uses the mean weights only; per_example_noise draws one sample per row."""
        if self.noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type={self.noise_type!r} is not one of {NOISE_TYPES}")
        fan_in, q = x_BxP.shape[-1], self.features
        sigma0 = DEFAULT_SIGMA0[self.noise_type] if self.sigma0 is None else self.sigma0
        mu_init = _uniform(initial_mu_bound(self.noise_type, fan_in))
        sigma_init = nn.initializers.constant(initial_sigma(self.noise_type, fan_in, sigma0))
        mu_w_PxQ = self.param("mu_w", mu_init, (fan_in, q))
        sigma_w_PxQ = self.param("sigma_w", sigma_init, (fan_in, q))
        y = x_BxP @ mu_w_PxQ
        if self.use_bias:
            mu_b_Q = self.param("mu_b", mu_init, (q,))
            sigma_b_Q = self.param("sigma_b", sigma_init, (q,))
            y = y + mu_b_Q
        if not use_noise:
            return y
        # One normal draw per layer call (the RNG dominates the cost of small layers on CPU).
        key = self.make_rng("noise")
        batch_shape = x_BxP.shape[:-1] if per_example_noise else ()
        if self.noise_type == "factorised":
            f_both = signed_sqrt(jax.random.normal(key, (*batch_shape, fan_in + q), x_BxP.dtype))
            f_in, f_out = f_both[..., :fan_in], f_both[..., fan_in:]
            y = y + ((x_BxP * f_in) @ sigma_w_PxQ) * f_out
            if self.use_bias:
                y = y + sigma_b_Q * f_out
            return y
        eps_both = jax.random.normal(key, (*batch_shape, fan_in + 1, q), x_BxP.dtype)
        eps_w, eps_b = eps_both[..., :fan_in, :], eps_both[..., fan_in, :]
        if per_example_noise:
            y = y + jnp.einsum("...p,...pq->...q", x_BxP, sigma_w_PxQ * eps_w)
        else:
            y = y + x_BxP @ (sigma_w_PxQ * eps_w)
        if self.use_bias:
            y = y + sigma_b_Q * eps_b
        return y
