"""Associative Compression Networks (Graves, Menick and van den Oord, arXiv:1804.02476)."""
