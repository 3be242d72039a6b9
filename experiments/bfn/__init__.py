"""Bayesian Flow Networks experiments."""
