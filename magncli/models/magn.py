"""MAGN (placeholder; the real network lands with the model core)."""
