"""resnet-serving's entry point: the `resnet-serving` CLI that wires the packages together.

Everything else lives in its own room (see docs/architecture.md); this package only builds
the command line from each room's `register(sub)` and turns user errors into one line.
"""

from contract import __version__

__all__ = ["__version__"]
