"""meteor: METEOR multi-encoder collaborative token pruning for vision-language models.

The library is usable without the CLI; the ``meteor`` command is a thin skin over it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("meteor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
