"""Data sources: embedded real data, TFDS data_source, raw files, and the input pipeline."""
