"""What both backends check at start-up, as the gateway's `BackendStartupError`.

Finding the model version on disk, reading its manifest and checking the served signature
are contract rules (`contract.manifest`, `contract.signatures`); here their errors become the
one start-up error the gateway reports (`/readyz`, the log, the CLI's `error:` line).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from contract.errors import ManifestError, SignatureMismatch
from contract.manifest import Manifest, read_manifest
from contract.manifest import version_dir as _version_dir
from contract.signatures import TensorSig, check_signature
from service.errors import BackendStartupError

log = logging.getLogger(__name__)


def version_dir(model_base: Path, model_name: str, version: int | None) -> Path:
    """`<base>/<name>/<version>` (the highest on disk when `version` is None), checked to exist."""
    try:
        return _version_dir(model_base, model_name, version)
    except ManifestError as exc:
        raise BackendStartupError(f"cannot find the model: {exc}") from None


def load_manifest(path: Path) -> Manifest:
    """The manifest of one version directory; a start-up error names the path and the reason."""
    try:
        return read_manifest(path)
    except ManifestError as exc:
        raise BackendStartupError(str(exc)) from None


def check_contract(manifest: Manifest, model: str, version: int, *, where: str) -> None:
    """A manifest served as `model` must be that model's: another model's manifest (a copied
    directory) is refused. A version number that differs only is logged: the model server's
    number is the one requests, responses and metrics use."""
    if manifest.model_name != model:
        raise BackendStartupError(
            f"{where}: the manifest is for model {manifest.model_name!r}, not {model!r}"
        )
    if manifest.model_version != version:
        log.warning(
            "%s: the manifest says version %d; serving it as version %d",
            where,
            manifest.model_version,
            version,
        )


def check_served_signature(
    manifest: Manifest,
    inputs: Mapping[str, TensorSig],
    outputs: Mapping[str, TensorSig],
    *,
    where: str,
) -> None:
    """The manifest's `serving_default` rule (`contract.signatures`), failing the start-up."""
    where = f"{where} (model {manifest.model_name} v{manifest.model_version})"
    try:
        check_signature(manifest.pixels_signature(), inputs, outputs, where=where)
    except SignatureMismatch as exc:
        raise BackendStartupError(str(exc)) from None
