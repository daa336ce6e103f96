"""otbench: a benchmark suite for representation transfer, centred on optimal transport."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("otbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
