"""Experiment entry point and per-method training code."""
