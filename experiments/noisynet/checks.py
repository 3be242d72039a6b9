"""Config checks that the gymnax method (method.py) and the Atari host loops share."""

from deepgen.core.validate import Checker
from deepgen.noisynet.layers import NOISE_TYPES


def check_noise_and_discount(check: Checker) -> None:
    """agent.noise_type, agent.sigma0 (0 = the paper's value) and agent.gamma, in that order."""
    check.one_of("agent.noise_type", NOISE_TYPES)
    check(check.config.agent.sigma0 >= 0, "agent.sigma0", "a number >= 0 (0 = the paper's value)")
    check.in_unit_interval("agent.gamma", closed=True)


def check_dqn_learner(check: Checker) -> None:
    """The DQN agents' exploration schedule and learner fields."""
    for name in ("epsilon_start", "epsilon_end", "epsilon_eval"):
        check.in_unit_interval(f"agent.{name}", closed=True)
    check.non_negative("agent.epsilon_decay_steps", "agent.learning_starts")
    check.positive(
        "agent.target_update_period",
        "agent.batch_size",
        "agent.huber_delta",
        "agent.env_steps_per_update",
    )
