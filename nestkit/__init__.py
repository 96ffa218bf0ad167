"""nestkit: a debuggable data pipeline and trainer for NEST-style self-supervised speech pre-training."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nestkit")  # pyproject.toml is the one source
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
