"""Bayesian Flow Networks (Graves, Srivastava, Atkinson, Gomez 2023; arXiv 2308.07037)."""
