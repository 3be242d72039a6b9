"""NoisyNet experiments: train, evaluate and plot learning curves."""
