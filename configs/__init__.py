"""Experiment configs: one module per method, `get_config(variant)` with named variants."""
