"""NoisyNet on ALE Atari: the host loops that step real emulators, declared for the one runner.

`NoisyNet.for_config` (method.py) picks `AtariA2C` for config.agent.name == "a2c" and `AtariDQN`
(DQN, Dueling) otherwise, for every env.name starting with "ALE/". What they share with each
other (checkpoints with host files, signals, metrics, evaluation, learning curves) is in
atari_host.py; the environments, preprocessing and replay are in deepgen/noisynet/atari.py.
"""

from experiments.noisynet.atari_a2c import AtariA2C
from experiments.noisynet.atari_dqn import AtariDQN

__all__ = ["AtariA2C", "AtariDQN"]
