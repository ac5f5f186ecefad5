"""cwm: a self-hosted webhook receiver and router built on Twisted."""

__version__ = "0.1.0"
__all__ = ["__version__"]
