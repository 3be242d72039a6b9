"""The learning-progress signals of Graves et al. 2017, Sec. 3, as pure functions.

x is the batch trained on, drawn from task k; theta the weights before the update and theta' after
it; x' a fresh batch. Loss-driven signals (Sec. 3.1), with L(x, theta) = -log p_theta(x):

    PG    nu = L(x, theta) - L(x, theta')                          prediction gain
    GPG   nu = ||grad_theta L(x, theta)||^2                        gradient prediction gain
    SPG   nu = L(x', theta) - L(x', theta'),  x' ~ D_k             self prediction gain
    TPG   nu = L(x', theta) - L(x', theta'),  x' ~ D_N (target)    target prediction gain
    MPG   nu = L(x', theta) - L(x', theta'),  x' ~ D_j, j ~ U(N)   mean prediction gain

Complexity-driven signals (Sec. 3.2), for a network trained with the variational (MDL) loss
E_{theta ~ P_phi} L(x, theta) + KL(P_phi || Q_psi) / S, or with L(x, theta) + alpha/2 ||theta||^2:

    VCG   nu = KL(P_phi' || Q_psi') - KL(P_phi || Q_psi)          variational complexity gain
    GVCG  nu = [grad_{phi,psi} KL(P_phi || Q_psi)]^T grad_phi E_{theta~P_phi} L(x, theta)  (*)
    L2G   nu = ||theta'||^2 - ||theta||^2                          L2 gain
    GL2G  nu = theta^T grad_theta L(x, theta)                      gradient L2 gain  (*)

(*) as the paper prints them; deepgen uses their negatives by default, see below.

The sign of the two gradient complexity signals. The paper's table writes GVCG as the product
above, without a minus sign, and calls it the first-order approximation of VCG; GL2G follows the
same pattern with the L2 complexity ||theta||^2 / 2, whose gradient is theta (recalled). But a
gradient-descent step phi' = phi - lr (grad E L + grad KL / S) changes the complexity by
KL' - KL ~ -lr grad KL . (grad E L + grad KL / S), and ||theta'||^2 - ||theta||^2 ~
-2 lr theta . (grad L + alpha theta): the product as written is large exactly when the step
DECREASES the complexity, the opposite of VCG and L2G. Measured on repeat copy and n-grams
(benchmarks/RESULTS.md), the literal sign starves the target task (GVCG never reached the
target in any seed) while the first-order sign behaves like VCG and L2G. So by default both are
multiplied by -1 (`sign=-1`, the first-order approximations of the gains under gradient
descent); `curriculum.literal_complexity_gradient=True` gives the products as printed. The paper divides every signal by the time needed to process the sample, in practice the
sequence length; the train step does that (`curriculum.divide_by_length`).
"""

from typing import Any

import jax

from deepgen.curriculum.model import squared_norm, tree_dot

LOSS_SIGNALS = (
    "prediction_gain",
    "gradient_prediction_gain",
    "self_prediction_gain",
    "target_prediction_gain",
    "mean_prediction_gain",
)
VARIATIONAL_SIGNALS = ("variational_complexity_gain", "gradient_variational_complexity_gain")
L2_SIGNALS = ("l2_gain", "gradient_l2_gain")
SIGNALS = LOSS_SIGNALS + VARIATIONAL_SIGNALS + L2_SIGNALS
POLICIES = (*SIGNALS, "uniform")
# Signals that score a fresh batch x', and the task it is drawn from.
FRESH_BATCH_TASK = {
    "self_prediction_gain": "same",
    "target_prediction_gain": "target",
    "mean_prediction_gain": "uniform",
}


def prediction_gain(*, loss_before: jax.Array, loss_after: jax.Array) -> jax.Array:
    """PG (and SPG, TPG, MPG on x'): L(x, theta) - L(x, theta')."""
    return loss_before - loss_after


def gradient_prediction_gain(*, loss_grads: Any) -> jax.Array:
    """GPG: ||grad_theta L(x, theta)||^2, the first-order approximation of PG."""
    return squared_norm(loss_grads)


def variational_complexity_gain(
    *, complexity_before: jax.Array, complexity_after: jax.Array
) -> jax.Array:
    """VCG: KL(P_phi' || Q_psi') - KL(P_phi || Q_psi)."""
    return complexity_after - complexity_before


def gradient_variational_complexity_gain(
    *, complexity_grads: Any, loss_grads: Any, sign: float = -1.0
) -> jax.Array:
    """GVCG: sign [grad_{phi,psi} KL]^T grad_phi E L (psi at its closed-form optimum: its part is 0).

    sign = -1 (default) makes it the first-order change of KL under a descent step (see above).
    """
    return sign * tree_dot(complexity_grads, loss_grads)


def l2_gain(*, params_before: Any, params_after: Any) -> jax.Array:
    """L2G: ||theta'||^2 - ||theta||^2."""
    return squared_norm(params_after) - squared_norm(params_before)


def gradient_l2_gain(*, params: Any, loss_grads: Any, sign: float = -1.0) -> jax.Array:
    """GL2G: sign theta^T grad_theta L(x, theta); sign = -1 follows ||theta||^2 under descent."""
    return sign * tree_dot(params, loss_grads)
