"""Every learning-progress signal of the fused step against a direct computation on a tiny LSTM.

The direct side recomputes the loss with its own formula, takes explicit gradients of it, and
runs the forward passes before and after the update separately; the complexity terms are checked
against their closed forms (the adaptive prior's optimum, KL = W log sigma_psi - sum log sigma).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepgen.curriculum import learner as learner_lib
from deepgen.curriculum import model, signals
from deepgen.curriculum.tasks import TaskBatch

VOCAB, SEQ, BATCH = 5, 7, 4


@dataclasses.dataclass(frozen=True, eq=False)
class TinyFamily:
    """Three categorical tasks: random tokens whose distribution sharpens with the task index."""

    kind: str = "tiny"
    task_names: tuple = ("t0", "t1", "t2")
    target_task: int = 2
    likelihood: str = "categorical"
    unit: str = "token"

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def sample(self, rng, task, batch_size, *, split="train"):
        logits = jnp.arange(VOCAB, dtype=jnp.float32) * task.astype(jnp.float32)
        tokens = jax.random.categorical(rng, logits, shape=(batch_size, SEQ + 1))
        lengths = jnp.full((batch_size,), SEQ + 1.0) + jnp.arange(batch_size)
        weights = (jnp.arange(SEQ) >= 2).astype(jnp.float32) * jnp.ones((batch_size, 1))
        return TaskBatch(jax.nn.one_hot(tokens[:, :-1], VOCAB), tokens[:, 1:], weights, lengths)


FAMILY = TinyFamily()
NETWORK = model.LSTMNet(hidden_size=6, output_size=VOCAB)
OPTIMIZER = optax.sgd(0.5)


def apply(params, inputs):
    return NETWORK.apply({"params": params}, inputs)


def direct_loss(weights, batch):
    """Mean over the batch of the summed scored -log p, written without the library's loss."""
    logits = apply(weights, batch.inputs_BxTxI)
    log_p = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    picked = jnp.sum(log_p * jax.nn.one_hot(batch.targets, VOCAB), axis=-1)
    return -jnp.sum(picked * batch.weights_BxT) / batch.targets.shape[0]


def closed_form_kl(posterior):
    """KL at the adaptive prior's optimum: W log sigma_psi - sum_i log sigma_i."""
    mu = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(posterior.mean)])
    log_sigma = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(posterior.log_sigma)])
    prior_variance = jnp.mean(jnp.exp(2 * log_sigma) + (mu - mu.mean()) ** 2)
    return mu.size * 0.5 * jnp.log(prior_variance) - jnp.sum(log_sigma)


def initial(variational):
    params = NETWORK.init(jax.random.key(3), jnp.zeros((1, SEQ, VOCAB)))["params"]
    if variational:
        params = model.init_posterior(params, init_sigma=0.05)
        # distinct sigmas, so that the prior and the KL are not degenerate
        params = params._replace(
            log_sigma=jax.tree.map(
                lambda s: s + 0.3 * jax.random.normal(jax.random.key(4), s.shape), params.log_sigma
            )
        )
    return params


# Three training regimes; every signal of a regime is computed from ONE step's inputs (one
# compilation per regime), and the step's own `signal` metric ties the fused path to them.
REGIMES = {
    "ml": (False, 0.0, signals.LOSS_SIGNALS),
    # GVCG first: the fused step takes its KL gradient from the regulariser's, not recomputed
    "vi": (
        True,
        0.0,
        ("gradient_variational_complexity_gain", "variational_complexity_gain", "prediction_gain"),
    ),
    "l2": (False, 0.01, signals.L2_SIGNALS),
}


@functools.cache
def run_step(regime):
    variational, l2_weight, names = REGIMES[regime]
    learner = learner_lib.Learner(
        apply=apply,
        likelihood="categorical",
        variational=variational,
        kl_scale=1e-3 if variational else 0.0,
        l2_weight=l2_weight,
    )
    settings = learner_lib.CurriculumSettings(
        signal=names[0],
        batch_size=BATCH,
        fresh_batch_size=3,
        eval_every=1,
        eval_batch_size=2,
        reservoir_size=8,
        target_loss=100.0,
    )
    state = learner_lib.init_state(initial(variational), OPTIMIZER, num_tasks=3, settings=settings)
    rng = jax.random.key(11)
    step = jax.jit(functools.partial(learner_lib.train_step, learner, OPTIMIZER, FAMILY, settings))
    new_state, metrics = step(state, rng)
    # The step's own key schedule, recomputed: fold in the step, then split five ways.
    _task_rng, batch_rng, noise_rng, fresh_rng, _ = jax.random.split(jax.random.fold_in(rng, 0), 5)
    task = jnp.int32(int(np.argmax(np.asarray(new_state.task_counts_N))))
    batch = FAMILY.sample(batch_rng, task, BATCH)

    @jax.jit
    def every_signal(params, new_params):
        loss, grads = jax.value_and_grad(learner.data_loss)(params, batch, noise_rng)
        inputs = dict(params=params, new_params=new_params, task=task, batch=batch)
        return {
            name: learner_lib.raw_signal(
                learner,
                FAMILY,
                dataclasses.replace(settings, signal=name),
                **inputs,
                loss_before=loss,
                loss_grads=grads,
                noise_rng=noise_rng,
                fresh_rng=fresh_rng,
            )
            / jnp.mean(batch.lengths_B)
            for name in names
        }

    computed = every_signal(state.params, new_state.params)
    return state, new_state, metrics, task, batch, noise_rng, fresh_rng, computed


def weights_of(params, variational, noise_rng):
    return model.sample_weights(params, noise_rng) if variational else params


SIGNAL_CASES = [(name, regime) for regime, (_, _, names) in REGIMES.items() for name in names]


@pytest.mark.parametrize("regime", REGIMES)
def test_the_fused_step_reports_its_signal(regime):
    _, _, metrics, *_, computed = run_step(regime)
    first = REGIMES[regime][2][0]
    assert float(metrics["signal"]) == pytest.approx(float(computed[first]), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("signal,regime", SIGNAL_CASES)
def test_signal_equals_direct_computation(signal, regime):
    variational = REGIMES[regime][0]
    state, new_state, _, task, batch, noise_rng, fresh_rng, computed = run_step(regime)
    before, after = state.params, new_state.params

    def data_loss(params, x):
        return direct_loss(weights_of(params, variational, noise_rng), x)

    if signal == "prediction_gain":
        nu = data_loss(before, batch) - data_loss(after, batch)
    elif signal in signals.FRESH_BATCH_TASK:
        task_rng, batch_rng = jax.random.split(fresh_rng)
        fresh_task = {
            "self_prediction_gain": task,
            "target_prediction_gain": jnp.int32(2),
            "mean_prediction_gain": jax.random.randint(task_rng, (), 0, 3, dtype=jnp.int32),
        }[signal]
        fresh = FAMILY.sample(batch_rng, fresh_task, 3)
        nu = data_loss(before, fresh) - data_loss(after, fresh)
    elif signal == "gradient_prediction_gain":
        grads = jax.grad(data_loss)(before, batch)
        nu = sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads))
    elif signal == "variational_complexity_gain":
        nu = closed_form_kl(after) - closed_form_kl(before)
    elif signal == "gradient_variational_complexity_gain":
        kl_grads = jax.grad(closed_form_kl)(before)
        loss_grads = jax.grad(data_loss)(before, batch)
        nu = -sum(  # the first-order sign (the default; the paper prints the product without -)
            np.vdot(a, b)
            for a, b in zip(jax.tree.leaves(kl_grads), jax.tree.leaves(loss_grads), strict=False)
        )
    elif signal == "l2_gain":
        norm = lambda p: sum(
            np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(p)
        )
        nu = norm(after) - norm(before)
    elif signal == "gradient_l2_gain":
        grads = jax.grad(data_loss)(before, batch)
        nu = -sum(
            np.vdot(a, b)
            for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(grads), strict=False)
        )
    expected = float(nu) / float(np.mean(np.asarray(batch.lengths_B)))
    assert float(computed[signal]) == pytest.approx(expected, rel=2e-4, abs=1e-7)


@pytest.mark.parametrize("regime", ["l2", "vi"])
def test_update_is_sgd_on_loss_plus_regulariser(regime):
    """theta' = theta - lr grad(L + alpha/2 ||theta||^2), or phi' = phi - lr grad(E L + KL / S)."""
    variational, l2_weight, _ = REGIMES[regime]
    state, new_state, _, _, batch, noise_rng, _, _ = run_step(regime)

    def objective(params):
        loss = direct_loss(weights_of(params, variational, noise_rng), batch)
        if variational:
            return loss + 1e-3 * closed_form_kl(params)
        return loss + 0.5 * l2_weight * sum(jnp.sum(x**2) for x in jax.tree.leaves(params))

    grads = jax.grad(objective)(state.params)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads)
    for got, want in zip(
        jax.tree.leaves(new_state.params), jax.tree.leaves(expected), strict=False
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_adaptive_prior_is_the_kl_minimiser_and_kl_has_its_closed_form():
    posterior = initial(True)
    mean, variance = model.adaptive_prior(posterior)
    kl = float(model.gaussian_kl(posterior, mean, variance))
    assert kl == pytest.approx(float(closed_form_kl(posterior)), rel=1e-5)
    for dm, dv in [(0.01, 0.0), (-0.01, 0.0), (0.0, 0.05), (0.0, -0.05)]:
        assert float(model.gaussian_kl(posterior, mean + dm, variance * (1 + dv))) > kl
    # One weight against the textbook formula in float64.
    mu, sigma = 0.3, 0.2
    single = model.Posterior({"w": jnp.asarray([mu])}, {"w": jnp.asarray([np.log(sigma)])})
    m0, v0 = -0.1, 0.5
    want = 0.5 * np.log(v0 / sigma**2) + (sigma**2 + (mu - m0) ** 2) / (2 * v0) - 0.5
    assert float(model.gaussian_kl(single, jnp.float32(m0), jnp.float32(v0))) == pytest.approx(
        want, rel=1e-5
    )


def test_complexity_gradient_is_the_partial_at_the_optimal_prior():
    """Envelope theorem: d KL(phi, psi*(phi)) / d phi = dKL/dphi with psi held at psi*."""
    posterior = initial(True)
    mean, variance = model.adaptive_prior(posterior)
    total = jax.grad(model.complexity)(posterior)
    partial = jax.grad(lambda p: model.gaussian_kl(p, mean, variance))(posterior)
    for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(partial), strict=False):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-6)


def test_step_evaluates_and_records_steps_to_target():
    _, new_state, *_ = run_step("ml")
    assert np.all(np.isfinite(np.asarray(new_state.eval_loss_N)))
    assert int(new_state.steps_to_target) == 1  # target_loss=100 is met at the first eval


def test_gradient_complexity_signals_are_first_order_complexity_gains():
    """Why the default sign is -1: for a small descent step on the regularised loss,
    VCG = -lr (GVCG_printed + grad KL . grad KL / S) + O(lr^2), and L2G = -2 lr (GL2G_printed +
    alpha ||theta||^2) + O(lr^2): the printed products move against the gains they approximate."""
    posterior = initial(True)
    lr, kl_scale, alpha = 1e-4, 1e-3, 0.01
    batch = FAMILY.sample(jax.random.key(5), jnp.int32(1), BATCH)
    noise = jax.random.key(6)

    def loss(p):
        return direct_loss(model.sample_weights(p, noise), batch)

    loss_grads, kl_grads = jax.grad(loss)(posterior), jax.grad(closed_form_kl)(posterior)
    step = jax.tree.map(lambda g, k: -lr * (g + kl_scale * k), loss_grads, kl_grads)

    def kl64(p):  # the closed form in float64: the change is far below float32's resolution
        mu = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(p.mean)])
        log_sigma = np.concatenate(
            [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(p.log_sigma)]
        )
        prior_variance = np.mean(np.exp(2 * log_sigma) + (mu - mu.mean()) ** 2)
        return mu.size * 0.5 * np.log(prior_variance) - np.sum(log_sigma)

    step64 = jax.tree.map(lambda x: np.asarray(x, np.float64), step)
    after = jax.tree.map(lambda p, d: np.asarray(p, np.float64) + d, posterior, step64)
    vcg = kl64(after) - kl64(posterior)
    printed = float(model.tree_dot(kl_grads, loss_grads))
    first_order = -lr * (printed + kl_scale * float(model.tree_dot(kl_grads, kl_grads)))
    assert vcg == pytest.approx(first_order, rel=0.02)
    default = signals.gradient_variational_complexity_gain(
        complexity_grads=kl_grads, loss_grads=loss_grads
    )
    assert float(default) == pytest.approx(-printed, rel=1e-6)

    theta = initial(False)
    grads = jax.grad(lambda p: direct_loss(p, batch))(theta)
    theta64 = jax.tree.map(lambda x: np.asarray(x, np.float64), theta)
    after = jax.tree.map(
        lambda p, g: p - lr * (np.asarray(g, np.float64) + alpha * p), theta64, grads
    )
    l2g = sum(
        np.sum(a**2) - np.sum(b**2)
        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(theta64), strict=True)
    )
    printed = float(model.tree_dot(theta, grads))
    first_order = -2 * lr * (printed + alpha * float(model.squared_norm(theta)))
    assert l2g == pytest.approx(first_order, rel=0.02)
    assert float(signals.gradient_l2_gain(params=theta, loss_grads=grads)) == pytest.approx(
        -printed, rel=1e-6
    )
