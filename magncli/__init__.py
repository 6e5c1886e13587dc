"""magn: MAGN image restoration."""
__version__ = "0.1.0"
