"""The tool version, recorded in every evidence manifest."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stirscope")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
