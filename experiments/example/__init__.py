"""The example method: the template a new method copies."""
