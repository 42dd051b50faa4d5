#!/usr/bin/env python3
"""Print the gateway image's pip requirements, derived from pyproject.toml (no second list).

    gateway_requirements.py pyproject.toml            # runtime deps, without TensorFlow
    gateway_requirements.py pyproject.toml --spec NAME # one dependency's full requirement

The gateway talks to TF Serving over gRPC and never runs a model, so `tensorflow` and `keras`
stay out of its image; `tensorflow-serving-api` is installed separately with `--no-deps`
(its only heavy dependency is tensorflow) and the proto modules it needs come from
`slim_protos.py`.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

EXCLUDED = frozenset({"tensorflow", "keras", "tensorflow-serving-api"})


def project_name(requirement: str) -> str:
    """Normalised distribution name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def dependencies(pyproject: Path) -> list[str]:
    """`[project].dependencies` of the project."""
    data = tomllib.loads(pyproject.read_text("utf-8"))
    return list(data["project"]["dependencies"])


def gateway_requirements(pyproject: Path) -> list[str]:
    """The project's runtime dependencies minus the TensorFlow runtime."""
    return [r for r in dependencies(pyproject) if project_name(r) not in EXCLUDED]


def requirement_for(pyproject: Path, name: str) -> str:
    """The project's own requirement string for `name` (e.g. `tensorflow>=2.21,<2.22`)."""
    for r in dependencies(pyproject):
        if project_name(r) == project_name(name):
            return r
    raise SystemExit(f"{name} is not a dependency in {pyproject}")


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        print("\n".join(gateway_requirements(Path(argv[1]))))
        return 0
    if len(argv) == 4 and argv[2] == "--spec":
        print(requirement_for(Path(argv[1]), argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
