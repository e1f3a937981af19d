"""The installed package's version (a source tree never installed says 0+unknown)."""

from importlib import metadata

try:
    __version__ = metadata.version("sise-inspector")
except metadata.PackageNotFoundError:
    __version__ = "0+unknown"
