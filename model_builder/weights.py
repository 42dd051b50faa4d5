"""Load weights into a built model: random, keras.applications ImageNet files, or user files.

Every file is read into `{layer name: [arrays]}` and checked against the model before any
weight is assigned, so a file that does not fit fails with the layer and both shapes instead
of keras' shapeless assignment error, and a failed load leaves the model untouched.

Readable formats: Keras 3 `.weights.h5`, `.keras` archives (their `model.weights.h5`), and the
legacy Keras 2 `.h5` layout that keras.applications ships its ImageNet weights in.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from keras.utils import get_file

from model_builder.errors import WeightsError

HEAD_LAYER = "predictions"
IMAGENET_CLASSES = 1000
# keras.applications' origin and checksums (keras/src/applications/resnet.py).
BASE_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


@dataclass(frozen=True)
class ImagenetFiles:
    """keras.applications' file names and md5 sums for one architecture: with and without top."""

    top_md5: str
    notop_md5: str

    @staticmethod
    def name(arch: str, *, top: bool) -> str:
        suffix = "" if top else "_notop"
        return f"{arch}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"


IMAGENET_WEIGHTS: dict[str, ImagenetFiles] = {
    "resnet50": ImagenetFiles("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ImagenetFiles("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ImagenetFiles("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
}  # fmt: skip


@dataclass(frozen=True)
class LoadedWeights:
    """What `load_weights` did, for the CLI summary and run.json notes."""

    source: str  # "random", "imagenet" or the user's path
    path: Path | None  # the file read, None for random
    layers_loaded: int
    head_skipped: bool  # ImageNet body loaded, `predictions` left random (classes != 1000)


def keras_home() -> Path:
    """Where keras caches downloads: `$KERAS_HOME`, else `~/.keras` (read now, as keras does
    at import time, so a changed environment is honoured)."""
    env = os.environ.get("KERAS_HOME")
    return Path(env).expanduser() if env else Path.home() / ".keras"


def load_weights(
    model: Any,
    source: str | Path,
    *,
    arch: str,
    cache_dir: Path | None = None,
    download: bool = True,
) -> LoadedWeights:
    """Fill `model` from `source`: "random" (keep the initialiser's values), "imagenet", or a
    path to a `.keras` / `.weights.h5` / legacy `.h5` file. WeightsError says why it cannot."""
    if str(source) == "random":
        return LoadedWeights("random", None, 0, head_skipped=False)
    if str(source) == "imagenet":
        head_skipped = _num_classes(model) != IMAGENET_CLASSES
        path = imagenet_file(arch, top=not head_skipped, cache_dir=cache_dir, download=download)
        n = assign_weights(model, read_weights_file(path), where=str(path), skip_head=head_skipped)
        return LoadedWeights("imagenet", path, n, head_skipped)
    path = Path(source)
    if path.suffix not in (".keras", ".h5"):
        raise WeightsError(
            "weights must be 'random', 'imagenet' or a path to a .keras or .weights.h5 file. "
            f"Received: weights={str(source)!r}"
        )
    if not path.is_file():
        raise WeightsError(f"weights file not found. Received: weights={str(source)!r}")
    n = assign_weights(model, read_weights_file(path), where=str(path), skip_head=False)
    return LoadedWeights(str(source), path, n, head_skipped=False)


def imagenet_file(
    arch: str, *, top: bool, cache_dir: Path | None = None, download: bool = True
) -> Path:
    """The keras.applications ImageNet file for `arch`: from the Keras cache if present (read
    as is: keras' get_file would re-download a file whose hash differs), else downloaded."""
    files = IMAGENET_WEIGHTS.get(arch)
    if files is None:
        known = ", ".join(IMAGENET_WEIGHTS)
        raise WeightsError(
            f"ImageNet weights exist only for {known} (keras.applications). Received: arch={arch!r}"
        )
    home = cache_dir or keras_home()
    # A body-only load can use either file; prefer one already on disk.
    names = [ImagenetFiles.name(arch, top=True)]
    if not top:
        names.insert(0, ImagenetFiles.name(arch, top=False))
    for name in names:
        if (home / "models" / name).is_file():
            return home / "models" / name
    wanted = names[0]
    if not download:
        raise WeightsError(_absent(home, wanted, "downloads are off"))

    md5 = files.top_md5 if top else files.notop_md5
    try:
        got = get_file(
            wanted,
            BASE_WEIGHTS_URL + wanted,
            cache_subdir="models",
            file_hash=md5,
            cache_dir=str(home),
        )
    except Exception as exc:  # keras wraps URL/HTTP/OS errors in plain Exception
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(_absent(home, wanted, f"download failed: {reason}")) from None
    return Path(got)


def _absent(home: Path, name: str, why: str) -> str:
    return (
        f"ImageNet weights {name} are not in {home / 'models'} and {why}; "
        f"copy {BASE_WEIGHTS_URL}{name} there (or set KERAS_HOME to the folder that holds "
        "models/)"
    )


# --------------------------------------------------------------------------- file reading


def read_weights_file(path: Path) -> dict[str, list[np.ndarray]]:
    """`{layer name: arrays in the layer's weight order}` for layers that have weights."""

    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                blob = io.BytesIO(archive.read("model.weights.h5"))
            with h5py.File(blob, "r") as f:
                return _read_h5(f)
        with h5py.File(path, "r") as f:
            return _read_h5(f)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None


def _read_h5(f: Any) -> dict[str, list[np.ndarray]]:
    if "layer_names" not in f.attrs and "model_weights" in f:
        f = f["model_weights"]  # a legacy full-model .h5
    if "layer_names" in f.attrs:  # legacy Keras 2: one group per layer, weight_names attr
        out: dict[str, list[np.ndarray]] = {}
        for layer in _strs(f.attrs["layer_names"]):
            names = _strs(f[layer].attrs.get("weight_names", []))
            if names:
                out[layer] = [np.asarray(f[layer][n]) for n in names]
        return out
    if "layers" in f:  # Keras 3: layers/<key>/vars/<i>, the layer's name in vars.attrs
        out = {}
        for key, group in f["layers"].items():
            vars_ = group.get("vars")
            if vars_ is not None and len(vars_):
                name = vars_.attrs.get("name", key)
                name = name.decode() if isinstance(name, bytes) else str(name)
                out[name] = [np.asarray(vars_[str(i)]) for i in range(len(vars_))]
        return out
    raise KeyError("no Keras weights layout (neither 'layer_names' nor 'layers') found")


def _strs(values: Sequence[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


# ------------------------------------------------------------------------------ assigning


def assign_weights(
    model: Any, weights: dict[str, list[np.ndarray]], *, where: str, skip_head: bool
) -> int:
    """Check every weighted layer of `model` against `weights`, then assign all of them.

    `skip_head`: leave `predictions` as initialised (ImageNet body with another class count).
    Returns the number of layers assigned.
    """
    targets = [layer for layer in model.layers if layer.weights]
    if skip_head:
        targets = [layer for layer in targets if layer.name != HEAD_LAYER]
    plan: list[tuple[Any, list[np.ndarray]]] = []
    for layer in targets:
        arrays = weights.get(layer.name)
        if arrays is None:
            raise WeightsError(
                f"weights file {where} does not fit {model.name}: "
                f"layer {layer.name!r} is missing from the file"
            )
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in arrays]
        if expected != found:
            raise WeightsError(
                f"weights file {where} does not fit {model.name}: layer {layer.name!r} "
                f"expects shapes {_fmt(expected)} but the file has {_fmt(found)}"
            )
        plan.append((layer, arrays))
    known = {layer.name for layer in model.layers}
    extra = sorted(set(weights) - known - ({HEAD_LAYER} if skip_head else set()))
    if extra:
        shown = ", ".join(repr(n) for n in extra[:3])
        raise WeightsError(
            f"weights file {where} does not fit {model.name}: the file has {len(extra)} "
            f"layer(s) the model lacks, e.g. {shown} (a deeper architecture?)"
        )
    for layer, arrays in plan:
        layer.set_weights(arrays)
    return len(plan)


def _fmt(shapes: list[tuple[int, ...]]) -> str:
    return "[" + ", ".join(str(s) for s in shapes) + "]" if len(shapes) != 1 else str(shapes[0])


def _num_classes(model: Any) -> int:
    return int(model.output_shape[-1])
