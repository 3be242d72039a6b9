"""deepgen: JAX/Flax implementations of generative-modelling and sequence-learning papers."""

__version__ = "0.1.0"
