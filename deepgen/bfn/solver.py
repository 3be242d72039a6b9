"""BFN-Solver: fast ODE/SDE samplers for trained BFNs on discrete and continuous data.

Xue et al., "Unifying Bayesian Flow Networks and Diffusion Models through Stochastic
Differential Equations", ICML 2024, arXiv 2404.15766 (reference code ML-GSAI/BFN-Solver,
bfnsolver_t.py). The paper works in diffusion time 1 - t; everything here is written in BFN
time t in [0, 1] (0 = prior, 1 = data), and the formulas below were derived here and checked
term by term against the reference code (the paper's equation numbers were not verified).

Discrete BFN with K classes, beta(t) = beta1 t^2, alpha(t) = 2 beta1 t. The logits y of the input
distribution (theta = softmax(y)) follow the Bayesian flow y_t ~ N(beta(t) (K e_x - 1), K beta(t) I),
a linear SDE whose score is -(y - beta (K p_hat - 1)) / (K beta), p_hat = E[e_x | y_t] being the
network's output distribution. With that, in BFN time:
  reverse SDE            dy = alpha(t) (K p_hat - 1) dt + sqrt(K alpha(t)) dW
                         (the linear part cancels exactly: the drift is the network term alone)
  probability-flow ODE   dy/dt = y / t + beta1 t (K p_hat - 1),  i.e. with z = y / t:
                         dz/dt = beta1 (K p_hat(softmax(t z), t) - 1)
Solvers, on the grid t_i = i / n (uniform in t, as the reference code), step s = t_{i-1} -> t = t_i,
previous time r = t_{i-2}, p_s = p_hat(theta_s, s), D = (p_s - p_r) / (s - r):
  sde1  y_t = y_s + (beta_t - beta_s)(K p_s - 1) + sqrt(K (beta_t - beta_s)) eps
  bfn   sde1 with p_s replaced by a one-hot draw k ~ p_s: this is exactly the original BFN sampler
        (sender y ~ N(alpha_i (K e_k - 1), alpha_i K I) with alpha_i = beta_t - beta_s), the same
        first-order solver plus a zero-mean O((beta_t - beta_s)^2) extra variance
  sde2  sde1 + K beta1 (t - s)^2 (2t + s) / 3 * D   (p_hat taken linear in t over the step)
  ode1  z_t = z_s + beta1 (t - s)(K p_s - 1)        (= y_t = (t/s) y_s + beta1 t (t - s)(K p_s - 1))
  ode2  ode1 + K beta1 (t - s)^2 / 2 * D            (multistep, DPM-Solver++(2M)-style)
The first step of sde2/ode2 has no previous output and is a first-order step. The exponential
integrators are exact when p_hat is constant over a step, so an oracle network that knows x
(p_hat = e_x) gives the exact Bayesian flow of x at every grid time.

Start: the SDE solvers start at the prior y_0 = 0 (t = 0), as the original sampler does. The ODE
is singular at t = 0 in y but not in z: z_0 = lim y_t / t ~ N(0, K beta1 I) exactly (y_t / t has
mean beta1 t (K E[e_x] - 1) -> 0 and variance K beta1), and the network reads theta = softmax(0 z)
= uniform at t = 0. So no small t_start is needed; the reference code starts at t = 1e-5 from
y ~ N(0, K beta(1e-5) I), which is the same start up to O(1e-5).
End: n solver steps (network calls at t_0..t_{n-1}), then one readout call at t = 1 whose argmax
is the sample, as deepgen.bfn.sampler.sample_discrete does: n + 1 network calls for every solver.

Clamping (infilling): at known positions p_s is replaced by the one-hot of the known class (and
the draw k of `bfn` by the class), so y there follows the exact Bayesian flow of the known data
for every solver, and the returned sample is the known value.

Continuous data (BFN Sec. 4, bfnsolver_i.py): mu_t ~ N(gamma x, gamma (1 - gamma)) is a
variance-preserving-type diffusion with signal alpha_t = gamma_t, noise sigma_t = sqrt(gamma (1 -
gamma)) = sqrt(beta_t) / rho_t (rho = 1 + beta, beta_t = sigma1^(-2t) - 1) and log-SNR
lambda_t = ln(alpha_t / sigma_t) = ln(beta_t) / 2, so the DPM-Solver++ updates in the data
prediction x_hat (clipped to [-1, 1]) apply; written with beta they have no singular factor:
  sde1  mu_t = (rho_s mu_s + (beta_t - beta_s) x_hat_s + sqrt(beta_t - beta_s) eps) / rho_t
        this is exactly the original sampler's Bayesian update with sender y ~ N(x_hat_s,
        1/alpha_i), alpha_i = beta_t - beta_s (the paper's first-order-SDE-solver result)
  sde2  sde1 with x_hat_s replaced by x_hat_s + (x_hat_s - x_hat_r) / (2 q)  (SDE-DPM-Solver++(2M))
  ode1  w_t = w_s + (sqrt(beta_t) - sqrt(beta_s)) x_hat_s  with w = mu / sigma  (DDIM)
  ode2  ode1 with x_hat_s replaced by x_hat_s + (x_hat_s - x_hat_r) / (2 q)  (DPM-Solver++(2M))
with q = (lambda_s - lambda_r) / (lambda_t - lambda_s). The ODE starts from w_0 = lim mu_t /
sigma_t ~ N(0, I) at t = 0 (where mu = 0 and the network's estimate is 0, as in the original
sampler), so again no t_start is needed; at i = 2, lambda_r = -inf and the step is first order.
Order: on the uniform t grid the discrete ode2 converges at order 2 (z is smooth in t). The
continuous ode2 has about half ode1's error but is first order as n grows: its first step starts
at zero SNR, where sqrt(beta(t)) ~ sqrt(t) is not smooth in t (tests/bfn/test_solver.py measures
both); a grid that is uniform near t = 0 in sqrt(beta) would restore order 2 (not done here).
"""

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from deepgen.bfn import continuous, discrete, sampler

Solver = Literal["bfn", "sde1", "sde2", "ode1", "ode2"]
SOLVERS: tuple[str, ...] = ("bfn", "sde1", "sde2", "ode1", "ode2")


def time_grid(n_steps: int) -> jax.Array:
    """The solver grid t_i = i / n, i = 0..n (uniform in BFN time, both ends included)."""
    return jnp.arange(n_steps + 1, dtype=jnp.float32) / n_steps


def _check_arguments(solver: str, solvers: tuple[str, ...], n_steps: int) -> None:
    """ValueError for a solver not in solvers or fewer than one step."""
    if solver not in solvers:
        raise ValueError(f"solver={solver!r} is not one of {solvers}")
    if n_steps < 1:
        raise ValueError(f"n_steps={n_steps} must be at least 1")


def ode_update(
    z_s: jax.Array,
    p_s: jax.Array,
    slope: jax.Array,
    *,
    s: jax.Array,
    t: jax.Array,
    beta1: float,
) -> jax.Array:
    """z_t from z_s = y_s / s: beta1 (t - s)(K p_s - 1) + K beta1 (t - s)^2 / 2 * slope.

    slope = dp_hat/dt estimated from the previous output (zero for the first-order solver).
    """
    num_classes = p_s.shape[-1]
    h = t - s
    return z_s + beta1 * h * (num_classes * p_s - 1.0) + num_classes * beta1 * h * h / 2.0 * slope


def sde_mean_update(
    y_s: jax.Array,
    p_s: jax.Array,
    slope: jax.Array,
    *,
    s: jax.Array,
    t: jax.Array,
    beta1: float,
) -> jax.Array:
    """E[y_t | y_s]: (beta_t - beta_s)(K p_s - 1) + K beta1 (t - s)^2 (2t + s) / 3 * slope."""
    num_classes = p_s.shape[-1]
    h = t - s
    delta_beta = beta1 * h * (t + s)
    correction = num_classes * beta1 * h * h * (2.0 * t + s) / 3.0
    return y_s + delta_beta * (num_classes * p_s - 1.0) + correction * slope


def integrate_discrete(
    log_probs_fn: discrete.LogProbsFn,
    *,
    rng: jax.Array,
    batch_size: int,
    variable_shape: tuple[int, ...],
    num_classes: int,
    n_steps: int,
    beta1: float,
    solver: Solver = "ode2",
    known_mask: jax.Array | None = None,
    known_values: jax.Array | None = None,
) -> jax.Array:
    """The logits y at t = 1 after n solver steps (one lax.scan), shape (B, *variable_shape, K)."""
    _check_arguments(solver, SOLVERS, n_steps)
    shape = (batch_size, *variable_shape)
    known = sampler._known(known_mask, known_values, shape, jnp.int32)
    known_onehot = None if known is None else jax.nn.one_hot(known[1], num_classes)
    is_ode = solver.startswith("ode")
    second_order = solver.endswith("2")

    def clamp_probs(p: jax.Array) -> jax.Array:
        return p if known is None else jnp.where(known[0][..., None], known_onehot, p)

    grid = time_grid(n_steps)
    steps = jnp.arange(1, n_steps + 1, dtype=jnp.int32)
    s_all, t_all = grid[:-1], grid[1:]
    r_all = jnp.concatenate([grid[:1], grid[:-2]])  # r = t_{i-2}; unused at i = 1

    def step(carry, xs):
        state, p_prev = carry  # state is z = y / t for the ODE solvers, y for the SDE solvers
        i, r, s, t = xs
        rng_net, rng_class, rng_sender = jax.random.split(jax.random.fold_in(rng, i), 3)
        y_s = s * state if is_ode else state
        t_B = jnp.full((batch_size,), s, jnp.float32)
        log_probs = log_probs_fn(jax.nn.softmax(y_s, axis=-1), t_B, rng_net)
        if solver == "bfn":
            k = sampler._clamp(jax.random.categorical(rng_class, log_probs, axis=-1), known)
            p_s = jax.nn.one_hot(k, num_classes)
        else:
            p_s = clamp_probs(jnp.exp(log_probs))
        if second_order:
            slope = jnp.where(i > 1, (p_s - p_prev) / jnp.maximum(s - r, 1e-12), 0.0)
        else:
            slope = jnp.zeros((), jnp.float32)
        if is_ode:
            new_state = ode_update(state, p_s, slope, s=s, t=t, beta1=beta1)
        else:
            mean = sde_mean_update(state, p_s, slope, s=s, t=t, beta1=beta1)
            delta_beta = beta1 * (t - s) * (t + s)
            noise = jax.random.normal(rng_sender, state.shape, jnp.float32)
            new_state = mean + jnp.sqrt(num_classes * delta_beta) * noise
        return (new_state, p_s if second_order else p_prev), None

    full_shape = (*shape, num_classes)
    if is_ode:
        init = jnp.sqrt(num_classes * beta1) * jax.random.normal(
            jax.random.fold_in(rng, 0), full_shape, jnp.float32
        )
    else:
        init = jnp.zeros(full_shape, jnp.float32)
    p_init = jnp.zeros(full_shape if second_order else (), jnp.float32)
    (state, _), _ = jax.lax.scan(step, (init, p_init), (steps, r_all, s_all, t_all))
    return state  # t_n = 1, so z = y for the ODE solvers too


def sample_discrete(
    log_probs_fn: discrete.LogProbsFn,
    *,
    rng: jax.Array,
    batch_size: int,
    variable_shape: tuple[int, ...],
    num_classes: int,
    n_steps: int,
    beta1: float,
    solver: Solver = "ode2",
    known_mask: jax.Array | None = None,
    known_values: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(samples (B, *variable_shape), t = 1 output probabilities ...xK), as sampler.sample_discrete.

    n solver steps, then one network readout at t = 1 whose argmax is the sample; known positions
    are clamped. solver="bfn" gives the original sampler's update with the same random numbers.
    """
    y_final = integrate_discrete(
        log_probs_fn,
        rng=rng,
        batch_size=batch_size,
        variable_shape=variable_shape,
        num_classes=num_classes,
        n_steps=n_steps,
        beta1=beta1,
        solver=solver,
        known_mask=known_mask,
        known_values=known_values,
    )
    shape = (batch_size, *variable_shape)
    known = sampler._known(known_mask, known_values, shape, jnp.int32)
    t_final = jnp.ones((batch_size,), jnp.float32)
    rng_final = jax.random.fold_in(rng, n_steps + 1)
    probs = jnp.exp(log_probs_fn(jax.nn.softmax(y_final, axis=-1), t_final, rng_final))
    return sampler._clamp(jnp.argmax(probs, axis=-1), known), probs


# (mu_BxD, t_B, rng) -> x_hat_BxD, the network's data estimate (clipped to [-1, 1]).
XHatFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
CONTINUOUS_SOLVERS: tuple[str, ...] = ("sde1", "sde2", "ode1", "ode2")


def integrate_continuous(
    x_hat_fn: XHatFn,
    *,
    rng: jax.Array,
    batch_size: int,
    variable_shape: tuple[int, ...],
    n_steps: int,
    sigma1: float,
    solver: str = "ode2",
    known_mask: jax.Array | None = None,
    known_values: jax.Array | None = None,
) -> jax.Array:
    """mu at t = 1 after n solver steps (one lax.scan) on the grid t_i = i / n, (B, *variable_shape).

    Random numbers as sampler.sample_continuous: sde1 with x_hat_fn = the clipped
    continuous.data_estimate of its eps_fn performs the same updates with the same noise.
    """
    _check_arguments(solver, CONTINUOUS_SOLVERS, n_steps)
    shape = (batch_size, *variable_shape)
    known = sampler._known(known_mask, known_values, shape, jnp.float32)
    is_ode = solver.startswith("ode")
    second_order = solver.endswith("2")
    grid = time_grid(n_steps)
    beta_all = continuous.accuracy_schedule(grid, sigma1=sigma1)
    steps = jnp.arange(1, n_steps + 1, dtype=jnp.int32)
    # (beta_r, beta_s, beta_t) for step i: r = t_{i-2} (unused for i = 1), s = t_{i-1}, t = t_i
    beta_r = jnp.concatenate([beta_all[:1], beta_all[:-2]])
    xs = (steps, grid[:-1], beta_r, beta_all[:-1], beta_all[1:])

    def step(carry, xs):
        state, x_hat_prev = (
            carry  # state is w = mu / sigma for the ODE solvers, mu for the SDE ones
        )
        i, s, b_r, b_s, b_t = xs
        rng_net, rng_sender = jax.random.split(jax.random.fold_in(rng, i), 2)
        rho_s, rho_t = 1.0 + b_s, 1.0 + b_t
        mu_s = jnp.sqrt(b_s) / rho_s * state if is_ode else state
        x_hat = sampler._clamp(
            x_hat_fn(mu_s, jnp.full((batch_size,), s, jnp.float32), rng_net), known
        )
        if second_order:
            # 1 / (2 q) = (lambda_t - lambda_s) / (2 (lambda_s - lambda_r)), lambda = ln(beta) / 2
            h = jnp.log(b_t) - jnp.log(jnp.maximum(b_s, 1e-30))
            h_prev = jnp.log(jnp.maximum(b_s, 1e-30)) - jnp.log(jnp.maximum(b_r, 1e-30))
            half_inv_q = jnp.where(i > 2, h / (2.0 * jnp.maximum(h_prev, 1e-30)), 0.0)
            estimate = x_hat + half_inv_q * (x_hat - x_hat_prev)
        else:
            estimate = x_hat
        delta_beta = b_t - b_s
        if is_ode:
            new_state = state + (jnp.sqrt(b_t) - jnp.sqrt(b_s)) * estimate
        else:
            noise = jax.random.normal(rng_sender, shape, jnp.float32)
            new_state = (
                rho_s * state + delta_beta * estimate + jnp.sqrt(delta_beta) * noise
            ) / rho_t
        return (new_state, x_hat if second_order else x_hat_prev), None

    if is_ode:
        init = jax.random.normal(jax.random.fold_in(rng, 0), shape, jnp.float32)
    else:
        init = jnp.zeros(shape, jnp.float32)
    x_hat_init = jnp.zeros(shape if second_order else (), jnp.float32)
    (state, _), _ = jax.lax.scan(step, (init, x_hat_init), xs)
    if is_ode:
        beta_1 = beta_all[-1]
        return jnp.sqrt(beta_1) / (1.0 + beta_1) * state
    return state


def sample_continuous(
    x_hat_fn: XHatFn,
    *,
    rng: jax.Array,
    batch_size: int,
    variable_shape: tuple[int, ...],
    n_steps: int,
    sigma1: float,
    solver: str = "ode2",
    known_mask: jax.Array | None = None,
    known_values: jax.Array | None = None,
) -> jax.Array:
    """x_hat at t = 1 after n solver steps, (B, *variable_shape); known positions are clamped.

    For discretised data pass x_hat_fn = the mean of the discretised output (the point estimate
    of L^inf, continuous.discretised_mean) and read the mode bin out of integrate_continuous's mu.
    """
    mu = integrate_continuous(
        x_hat_fn,
        rng=rng,
        batch_size=batch_size,
        variable_shape=variable_shape,
        n_steps=n_steps,
        sigma1=sigma1,
        solver=solver,
        known_mask=known_mask,
        known_values=known_values,
    )
    shape = (batch_size, *variable_shape)
    known = sampler._known(known_mask, known_values, shape, jnp.float32)
    t_final = jnp.ones((batch_size,), jnp.float32)
    return sampler._clamp(x_hat_fn(mu, t_final, jax.random.fold_in(rng, n_steps + 1)), known)
