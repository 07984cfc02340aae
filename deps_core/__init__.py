"""deps: once-for-all supernet training with DεpS."""

__version__ = "0.1.0"
