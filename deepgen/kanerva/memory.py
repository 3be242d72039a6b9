"""The Kanerva Machine's memory: a matrix-normal distribution, its exact Bayesian write and reads.

Wu, Wayne, Graves and Lillicrap, arXiv:1804.01756: the generative model and the reading and
writing inference models of Fig. 1 (the write is the dashed, exact-inference arrow). The equations
below are reconstructed (the team's notes, `shared/specs/acn_kanerva.md` Sec. 2.2), not copied
from the PDF, which was not read; section and equation numbers are therefore not quoted. The tests
check them against brute-force Gaussian algebra.

Memory M (K rows, C columns) has the matrix-normal distribution MN(R, U, V = I_C): the columns
are independent and share the K x K row covariance U, i.e. vec_row(M) ~ N(vec_row(R), U kron I_C).
The prior p(M) = MN(R0, U0, I) is learned (`prior_memory`). An address w_t (K) comes from a key
y_t through a key network b and the address matrix A (S x K): w_t^T = b(y_t)^T A
(`addressing_weights`). A read is linear-Gaussian, z_t | M ~ N(w_t^T M, sigma_xi^2 I_C).

Writing an episode (W: T x K addresses, Z: T x C codes) is exact Bayesian inference of M, a
Kalman / recursive-least-squares update (`write_batch`, or T rank-1 updates `write_sequential`):

    Delta   = Z - W R                        (T x C)
    Sigma_c = W U                            (T x K)
    Sigma_z = W U W^T + sigma_xi^2 I_T       (T x T)
    R <- R + Sigma_c^T Sigma_z^{-1} Delta,   U <- U - Sigma_c^T Sigma_z^{-1} Sigma_c.

The episode ELBO's memory term is KL(q(M) || p(M)) between matrix normals with V = I
(`matrix_normal_kl`):

    1/2 [ C tr(U_p^{-1} U_q) + tr((R_q - R_p)^T U_p^{-1} (R_q - R_p)) - K C
          + C (log|U_p| - log|U_q|) ].

The Dynamic Kanerva Machine's public `memory.py` (`get_dkl_total`) drops the 1/2 and replaces
log|U| by sum_k log U_kk; it is not used here. Every inverse is a Cholesky factor and triangular
solves. All functions are for one episode (vmap over episodes) and keep the dtype they are given;
in float32 ask for `jax.default_matmul_precision("highest")` on accelerators whose default
matmuls are bf16, which ruins the covariance updates.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular


class MemoryDistribution(flax.struct.PyTreeNode):
    """MN(R, U, I_C): mean R_KxC and row covariance U_KxK; V = I_C is implied, not stored."""

    R_KxC: jax.Array
    U_KxK: jax.Array


def _symmetrise(U_KxK: jax.Array) -> jax.Array:
    return 0.5 * (U_KxK + U_KxK.T)


def _lower_solve(L_NxN: jax.Array, B_NxM: jax.Array) -> jax.Array:
    """L^{-1} B for a lower-triangular L."""
    return solve_triangular(L_NxN, B_NxM, lower=True)


def _log_det_from_cholesky(L_NxN: jax.Array) -> jax.Array:
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L_NxN)))


def _read_covariance(U_KxK: jax.Array, W_TxK: jax.Array, noise_variance) -> jax.Array:
    """W U W^T + sigma^2 I_T: the covariance over the T reads of any one column of Z."""
    sigma_z_TxT = W_TxK @ U_KxK @ W_TxK.T + noise_variance * jnp.eye(
        W_TxK.shape[0], dtype=W_TxK.dtype
    )
    return _symmetrise(sigma_z_TxT)


def prior_memory(
    R0_KxC: jax.Array,
    *,
    log_sigma0_sq: jax.Array | float | None = None,
    U0_cholesky_param_KxK: jax.Array | None = None,
) -> MemoryDistribution:
    """p(M) = MN(R0, U0, I) from learned parameters; exactly one U0 parameterisation must be given.

    log_sigma0_sq (scalar): U0 = exp(log_sigma0_sq) I_K, the diagonal prior of the DKM code (the
    notes recall the same for the KM; not checked against the paper).
    U0_cholesky_param_KxK: U0 = L L^T with L the strict lower triangle of the parameter plus
    exp(its diagonal) on the diagonal, so every real K x K matrix gives a positive-definite U0;
    the upper triangle is ignored (zero gradient). A zero parameter gives U0 = I.
    """
    if (log_sigma0_sq is None) == (U0_cholesky_param_KxK is None):
        raise ValueError("prior_memory: give exactly one of log_sigma0_sq, U0_cholesky_param_KxK")
    K, dtype = R0_KxC.shape[0], R0_KxC.dtype
    if log_sigma0_sq is not None:
        U0_KxK = jnp.exp(jnp.asarray(log_sigma0_sq, dtype)) * jnp.eye(K, dtype=dtype)
    else:
        param = jnp.asarray(U0_cholesky_param_KxK, dtype)
        L_KxK = jnp.tril(param, k=-1) + jnp.diag(jnp.exp(jnp.diagonal(param)))
        U0_KxK = L_KxK @ L_KxK.T
    return MemoryDistribution(R_KxC=R0_KxC, U_KxK=U0_KxK)


def addressing_weights(
    key_BxS: jax.Array, A_SxK: jax.Array, *, normalize: bool = False
) -> jax.Array:
    """w^T = b(y)^T A for keys b(y) (any leading axes); shape ... x K.

    normalize: scale every column of A (the S-dim address of one memory row) to unit L2 norm
    first. The notes recall that the paper normalises A in some way; whether it does, and over
    which axis, is unverified, hence off by default. The norm is floored at float eps so a zero
    column gives a finite gradient.
    """
    if normalize:
        eps = jnp.finfo(A_SxK.dtype).eps
        A_SxK = A_SxK * jax.lax.rsqrt(jnp.sum(jnp.square(A_SxK), axis=0, keepdims=True) + eps**2)
    return key_BxS @ A_SxK


def write_batch(
    memory: MemoryDistribution,
    W_TxK: jax.Array,
    Z_TxC: jax.Array,
    *,
    noise_variance: jax.Array | float,
) -> MemoryDistribution:
    """q(M | W, Z): the exact posterior after writing a whole episode; one T x T Cholesky.

    Sigma_z must be positive definite: noise_variance > 0, or W of full row rank with T <= K.
    Nothing clips U's diagonal (the DKM code clips it to [1e-6, 1e10]); with a tiny noise_variance
    in float32, U can lose definiteness after many writes.
    """
    R_KxC, U_KxK = memory.R_KxC, memory.U_KxK
    C = R_KxC.shape[1]
    delta_TxC = Z_TxC - W_TxK @ R_KxC
    sigma_c_TxK = W_TxK @ U_KxK
    L_TxT = jnp.linalg.cholesky(_read_covariance(U_KxK, W_TxK, noise_variance))
    # One triangular solve for both right-hand sides: with B = L^{-1} Sigma_c and D = L^{-1} Delta,
    # Sigma_c^T Sigma_z^{-1} Delta = B^T D and Sigma_c^T Sigma_z^{-1} Sigma_c = B^T B.
    solved = _lower_solve(L_TxT, jnp.concatenate([delta_TxC, sigma_c_TxK], axis=1))
    D_TxC, B_TxK = solved[:, :C], solved[:, C:]
    R_KxC = R_KxC + B_TxK.T @ D_TxC
    # Rounding leaves U - B^T B slightly asymmetric (and the caller's U may be); Cholesky factors
    # of U (KL, sampling) read one triangle only, so both must agree, and asymmetric errors would
    # otherwise build up over repeated writes.
    U_KxK = _symmetrise(U_KxK - B_TxK.T @ B_TxK)
    return MemoryDistribution(R_KxC=R_KxC, U_KxK=U_KxK)


def write_sequential(
    memory: MemoryDistribution,
    W_TxK: jax.Array,
    Z_TxC: jax.Array,
    *,
    noise_variance: jax.Array | float,
) -> MemoryDistribution:
    """The same posterior as `write_batch` by T rank-1 updates in a scan (the online form)."""

    def step(carry, inputs):
        R_KxC, U_KxK = carry
        w_K, z_C = inputs
        Uw_K = U_KxK @ w_K
        c_K = Uw_K / (w_K @ Uw_K + noise_variance)
        R_KxC = R_KxC + jnp.outer(c_K, z_C - w_K @ R_KxC)
        # Symmetrised for the reason given in write_batch.
        U_KxK = _symmetrise(U_KxK - jnp.outer(c_K, Uw_K))
        return (R_KxC, U_KxK), None

    (R_KxC, U_KxK), _ = jax.lax.scan(step, (memory.R_KxC, memory.U_KxK), (W_TxK, Z_TxC))
    return MemoryDistribution(R_KxC=R_KxC, U_KxK=U_KxK)


def read(
    memory: MemoryDistribution, W_TxK: jax.Array, *, noise_variance: jax.Array | float
) -> tuple[jax.Array, jax.Array]:
    """p(z | w) with M ~ memory integrated out, per address: (mean_TxC, variance_T).

    mean = w^T R; variance = max(w^T U w, 0) + noise_variance, shared by the C columns. W may be
    one address w_K (then mean_C and a scalar variance). These are marginals per address; the joint
    over several addresses is correlated through M (`read_sample` draws it).
    """
    mean = W_TxK @ memory.R_KxC
    quadratic = jnp.einsum("...k,kl,...l->...", W_TxK, memory.U_KxK, W_TxK)
    # At a written address w^T U w is about noise_variance and comes from U - B^T B: in float32
    # the cancellation leaves an absolute error of ~1e-7 |w|^2, which can make it negative.
    return mean, jnp.maximum(quadratic, 0.0) + noise_variance


def read_sample(
    rng: jax.Array,
    memory: MemoryDistribution,
    W_TxK: jax.Array,
    *,
    noise_variance: jax.Array | float,
) -> jax.Array:
    """Z_TxC, z_t = w_t^T M + xi_t with one M ~ memory shared by the T reads; M is not formed.

    Exact: each column of Z is N(W R_c, W U W^T + sigma^2 I_T) and the columns are independent,
    so one T x T Cholesky suffices. Needs noise_variance > 0 unless W has full row rank.
    """
    L_TxT = jnp.linalg.cholesky(_read_covariance(memory.U_KxK, W_TxK, noise_variance))
    eps_TxC = jax.random.normal(rng, (W_TxK.shape[0], memory.R_KxC.shape[1]), W_TxK.dtype)
    return W_TxK @ memory.R_KxC + L_TxT @ eps_TxC


def sample_memory(rng: jax.Array, memory: MemoryDistribution) -> jax.Array:
    """M_KxC ~ MN(R, U, I) = R + chol(U) E; for reads that must share one M across calls."""
    L_KxK = jnp.linalg.cholesky(memory.U_KxK)
    eps_KxC = jax.random.normal(rng, memory.R_KxC.shape, memory.R_KxC.dtype)
    return memory.R_KxC + L_KxK @ eps_KxC


def matrix_normal_kl(q: MemoryDistribution, p: MemoryDistribution) -> jax.Array:
    """KL(MN(R_q, U_q, I) || MN(R_p, U_p, I)), exact; a scalar. U_q and U_p must be PD."""
    K, C = q.R_KxC.shape
    L_q = jnp.linalg.cholesky(q.U_KxK)
    L_p = jnp.linalg.cholesky(p.U_KxK)
    # tr(U_p^{-1} U_q) = |L_p^{-1} L_q|_F^2 and tr(D^T U_p^{-1} D) = |L_p^{-1} D|_F^2.
    solved = _lower_solve(L_p, jnp.concatenate([L_q, q.R_KxC - p.R_KxC], axis=1))
    trace = jnp.sum(jnp.square(solved[:, :K]))
    mahalanobis = jnp.sum(jnp.square(solved[:, K:]))
    log_det_ratio = _log_det_from_cholesky(L_p) - _log_det_from_cholesky(L_q)
    return 0.5 * (C * trace + mahalanobis - K * C + C * log_det_ratio)


def log_marginal_likelihood(
    memory: MemoryDistribution,
    W_TxK: jax.Array,
    Z_TxC: jax.Array,
    *,
    noise_variance: jax.Array | float,
) -> jax.Array:
    """log p(Z | W) with M ~ memory integrated out (the memory's coding cost of Z); a scalar.

    sum over columns of log N(z_c; W R_c, W U W^T + sigma^2 I_T); by the chain rule it equals
    sum_t log p(z_t | z_<t), each read from the memory written with z_<t.
    """
    T, C = Z_TxC.shape
    L_TxT = jnp.linalg.cholesky(_read_covariance(memory.U_KxK, W_TxK, noise_variance))
    D_TxC = _lower_solve(L_TxT, Z_TxC - W_TxK @ memory.R_KxC)
    log_det = _log_det_from_cholesky(L_TxT)
    return -0.5 * (jnp.sum(jnp.square(D_TxC)) + C * log_det + T * C * math.log(2.0 * math.pi))


def gaussian_kl_diag(
    mean_q: jax.Array, log_var_q: jax.Array, mean_p: jax.Array, log_var_p: jax.Array
) -> jax.Array:
    """KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))) for diagonal Gaussians, summed
    over the last axis (e.g. q(z | x, y, M) against the read p(z | y, M))."""
    return 0.5 * jnp.sum(
        log_var_p
        - log_var_q
        + jnp.exp(log_var_q - log_var_p)
        + jnp.square(mean_q - mean_p) * jnp.exp(-log_var_p)
        - 1.0,
        axis=-1,
    )
