"""Shared infrastructure: mesh and sharding, train loop, checkpoints, metrics, optimisers."""
