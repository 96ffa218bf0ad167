"""nestkit: a debuggable data pipeline and trainer for NEST-style self-supervised speech pre-training."""

__version__ = "0.1.0"
