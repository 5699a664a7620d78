"""Pieces every stage uses: config, errors, keyed randomness, file I/O, tiling, label conventions,
synthetic data."""
