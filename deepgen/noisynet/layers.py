"""The noisy linear layer of NoisyNet (Fortunato et al., arXiv:1706.10295, Sec. 3, Eqs. 9-11).

y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b. Independent noise draws every eps_w[i, j]
and eps_b[j] from N(0, 1); factorised noise draws p input noises and q output noises and uses
eps_w[i, j] = f(eps_i) f(eps_j), eps_b[j] = f(eps_j) with f(x) = sgn(x) sqrt(|x|) (Eqs. 10-11).
The p x q noise matrix is never formed as an array. With one noise sample shared by the batch (the
learner), the noisy weights mu_w + sigma_w * (f(eps_in) f(eps_out)^T) are computed in one fused
element-wise pass over mu and sigma and multiplied once: the layer then costs one matmul plus O(pq)
element-wise work, against two matmuls for the factored form ((x * f(eps_in)) @ sigma_w) * f(eps_out),
which is kept for per-example noise (acting), where the noisy weights would differ per row.
The noise is a standard-normal draw from the "noise" rng stream, or passed in pre-drawn (`noise`):
networks draw once for all their layers, and training loops can draw it ahead (see trainer.py).
Initialisation follows Sec. 3.2: factorised mu ~ U[-1/sqrt(p), 1/sqrt(p)],
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


def noise_size(noise_type: str, fan_in: int, features: int) -> int:
    """Standard-normal draws per noise sample of a fan_in -> features layer: p + q or (p + 1) q."""
    if noise_type == "factorised":
        return fan_in + features
    return (fan_in + 1) * features


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
        self,
        x_BxP: jax.Array,
        *,
        use_noise: bool = True,
        per_example_noise: bool = False,
        noise: jax.Array | None = None,
    ) -> jax.Array:
        """use_noise=False: mean weights; per_example_noise: one sample per row; noise: pre-drawn N(0, 1)."""
        if self.noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type={self.noise_type!r} is not one of {NOISE_TYPES}")
        fan_in, q = x_BxP.shape[-1], self.features
        sigma0 = DEFAULT_SIGMA0[self.noise_type] if self.sigma0 is None else self.sigma0
        mu_init = _uniform(initial_mu_bound(self.noise_type, fan_in))
        sigma_init = nn.initializers.constant(initial_sigma(self.noise_type, fan_in, sigma0))
        mu_w_PxQ = self.param("mu_w", mu_init, (fan_in, q))
        sigma_w_PxQ = self.param("sigma_w", sigma_init, (fan_in, q))
        if self.use_bias:
            mu_b_Q = self.param("mu_b", mu_init, (q,))
            sigma_b_Q = self.param("sigma_b", sigma_init, (q,))
        if not use_noise:
            return x_BxP @ mu_w_PxQ + mu_b_Q if self.use_bias else x_BxP @ mu_w_PxQ
        batch_shape = x_BxP.shape[:-1] if per_example_noise else ()
        shape = (*batch_shape, noise_size(self.noise_type, fan_in, q))
        if noise is None:
            noise = jax.random.normal(self.make_rng("noise"), shape, x_BxP.dtype)
        elif noise.shape != shape:
            raise ValueError(f"pre-drawn noise has shape {noise.shape}, this layer needs {shape}")
        if self.noise_type == "factorised":
            f_both = signed_sqrt(noise)
            f_in, bias_noise = f_both[..., :fan_in], f_both[..., fan_in:]
            if per_example_noise:
                y = x_BxP @ mu_w_PxQ + ((x_BxP * f_in) @ sigma_w_PxQ) * bias_noise
            else:  # fused: mu + sigma * f_in f_out^T is one element-wise pass, then one matmul
                y = x_BxP @ (mu_w_PxQ + sigma_w_PxQ * (f_in[:, None] * bias_noise[None, :]))
        else:
            eps_both = noise.reshape(*batch_shape, fan_in + 1, q)
            eps_w, bias_noise = eps_both[..., :fan_in, :], eps_both[..., fan_in, :]
            if per_example_noise:
                y = x_BxP @ mu_w_PxQ + jnp.einsum("...p,...pq->...q", x_BxP, sigma_w_PxQ * eps_w)
            else:
                y = x_BxP @ (mu_w_PxQ + sigma_w_PxQ * eps_w)
        if self.use_bias:
            y = y + mu_b_Q + sigma_b_Q * bias_noise
        return y
