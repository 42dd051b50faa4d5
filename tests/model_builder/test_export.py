"""export_model: a reloadable TF Serving SavedModel that matches its Keras model."""

from __future__ import annotations

import hashlib
import io
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from contract.manifest import (
    LABELS_RELPATH,
    MANIFEST_RELPATH,
    WARMUP_RELPATH,
    parse_manifest,
    read_manifest,
)
from contract.signatures import (
    CLIENT_CALLS,
    INPUT_BYTES,
    INPUT_MANIFEST,
    INPUT_PIXELS,
    OUTPUT_MANIFEST,
    OUTPUT_PROBABILITIES,
    OUTPUT_TOP_K_IDS,
    OUTPUT_TOP_K_SCORES,
    SIGNATURE_BYTES,
    SIGNATURE_MANIFEST,
    SIGNATURE_PIXELS,
)
from contract.tfs_config import (
    BATCHING_CONFIG,
    MODELS_CONFIG,
    STABLE_LABEL,
    model_entry,
    pinned_versions,
    read_batching_parameters,
    read_models_config,
    with_versions,
    write_text_proto,
)
from model_builder.artifacts import RunInfo
from model_builder.errors import ExportError
from model_builder.export import export_model
from model_builder.warmup import read_warmup_requests

FLOAT32_TOLERANCE = 1e-5
BF16_TOLERANCE = 2e-2  # bfloat16 keeps 8 mantissa bits: ~3 significant digits per op
FP16_TOLERANCE = 5e-3  # float16 keeps 11: ~3.3 digits, with float32 softmax


def _png(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("n", [1, 3, 4])
def test_pixels_signature_matches_keras(
    loaded: Any, exported: Any, pixels: np.ndarray, reference: Any, n: int
) -> None:
    import tensorflow as tf

    out = loaded.signatures[SIGNATURE_PIXELS](**{INPUT_PIXELS: tf.constant(pixels[:n])})
    probs = out[OUTPUT_PROBABILITIES].numpy()
    expected = reference(exported.model, pixels[:n])
    assert probs.shape == (n, len(exported.run_info.labels))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, atol=FLOAT32_TOLERANCE)
    ids = out[OUTPUT_TOP_K_IDS].numpy()
    scores = out[OUTPUT_TOP_K_SCORES].numpy()
    assert ids.dtype == np.int32 and ids.shape == (n, 3)
    np.testing.assert_array_equal(ids[:, 0], expected.argmax(axis=1))
    np.testing.assert_allclose(scores, np.take_along_axis(probs, ids, axis=1), atol=1e-7)


def test_bytes_signature_same_size_png_equals_pixels(loaded: Any, pixels: np.ndarray) -> None:
    import tensorflow as tf

    via_bytes = loaded.signatures[SIGNATURE_BYTES](
        image_bytes=tf.constant([_png(p) for p in pixels[:2]])
    )
    via_pixels = loaded.signatures[SIGNATURE_PIXELS](images=tf.constant(pixels[:2]))
    np.testing.assert_allclose(
        via_bytes[OUTPUT_PROBABILITIES].numpy(),
        via_pixels[OUTPUT_PROBABILITIES].numpy(),
        atol=FLOAT32_TOLERANCE,
    )


def test_bytes_signature_resizes_shorter_side_and_crops_centre(loaded: Any) -> None:
    """A 40x24 (w x h) gradient: shorter side 24 -> 16, width 40 -> 27, centre 16 crop."""
    import tensorflow as tf

    yy, xx = np.mgrid[0:24, 0:40]
    big = np.stack([xx * 6, yy * 10, (xx + yy) * 4], axis=-1).clip(0, 255).astype(np.uint8)
    resized = np.asarray(Image.fromarray(big).resize((27, 16), Image.Resampling.BILINEAR))
    left = (27 - 16) // 2
    expected_pixels = resized[:, left : left + 16][None]

    via_bytes = loaded.signatures[SIGNATURE_BYTES](image_bytes=tf.constant([_png(big)]))
    via_pixels = loaded.signatures[SIGNATURE_PIXELS](images=tf.constant(expected_pixels))
    # Pillow and tf.image.resize differ by a few grey levels at most on a smooth image.
    np.testing.assert_allclose(
        via_bytes[OUTPUT_PROBABILITIES].numpy(),
        via_pixels[OUTPUT_PROBABILITIES].numpy(),
        atol=2e-3,
    )


def test_bytes_signature_composites_alpha_onto_white(loaded: Any) -> None:
    import tensorflow as tf

    transparent = np.zeros((16, 16, 4), np.uint8)  # fully transparent black
    white = np.full((1, 16, 16, 3), 255, np.uint8)
    via_bytes = loaded.signatures[SIGNATURE_BYTES](
        image_bytes=tf.constant([_png(transparent, "RGBA")])
    )
    via_pixels = loaded.signatures[SIGNATURE_PIXELS](images=tf.constant(white))
    np.testing.assert_allclose(
        via_bytes[OUTPUT_PROBABILITIES].numpy(),
        via_pixels[OUTPUT_PROBABILITIES].numpy(),
        atol=FLOAT32_TOLERANCE,
    )


def test_manifest_and_labels(exported: Any) -> None:
    m = read_manifest(exported.version_dir)
    assert (m.model_name, m.model_version) == ("tiny", 1)
    assert m.architecture == "tiny_resnet"
    assert (m.input.height, m.input.width) == (16, 16)
    assert m.labels == exported.run_info.labels
    assert m.batch_buckets == (1, 2, 4)
    assert (m.top_k, m.precision, m.xla_compiled, m.folded_batchnorm) == (3, "float32", True, True)
    assert m.normalization == exported.run_info.normalization
    assert m.preprocessing == exported.run_info.preprocessing
    assert {"tensorflow", "keras"} <= set(m.framework)
    assert datetime.fromisoformat(m.created_at).utcoffset() is not None
    labels = (exported.version_dir / LABELS_RELPATH).read_text(encoding="utf-8").splitlines()
    assert tuple(labels) == exported.run_info.labels


def test_warmup_records_cover_each_client_call_and_bucket(exported: Any, loaded: Any) -> None:
    """Read back with TF Serving's own PredictionLog class, as TF Serving reads the file."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = tf.data.TFRecordDataset(str(exported.version_dir / WARMUP_RELPATH))
    requests = [
        prediction_log_pb2.PredictionLog.FromString(r).predict_log.request
        for r in records.as_numpy_iterator()
    ]
    assert len(requests) == len(read_warmup_requests(exported.version_dir))
    seen = []
    for request in requests:
        assert request.model_spec.name == "tiny"
        sig = request.model_spec.signature_name
        [(name, proto)] = request.inputs.items()
        batch = tf.make_ndarray(proto)  # a pixel record's one value fills its whole shape
        if sig == SIGNATURE_PIXELS:
            assert batch.dtype == np.uint8 and batch.shape[1:] == (16, 16, 3)
            assert len(request.SerializeToString()) < 200  # not 16*16*3 bytes per image
        elif sig == SIGNATURE_MANIFEST:
            assert (name, batch.dtype, batch.ndim) == (INPUT_MANIFEST, np.int32, 1)
        else:
            assert (sig, name, batch.dtype) == (SIGNATURE_BYTES, INPUT_BYTES, object)
            assert tf.io.decode_jpeg(batch[0]).shape == (16, 16, 3)
        out = loaded.signatures[sig](**{name: tf.constant(batch)})
        assert next(iter(out.values())).shape[0] == batch.shape[0]
        seen.append((sig, tuple(request.output_filter), batch.shape[0]))
    assert seen == [(c.signature, c.output_filter, n) for c in CLIENT_CALLS for n in (1, 2, 4)]


def test_manifest_signature_returns_the_manifest_file(exported: Any, loaded: Any) -> None:
    """The contract over gRPC: one row per input row, each the very bytes of manifest.json."""
    import tensorflow as tf

    text = (exported.version_dir / MANIFEST_RELPATH).read_bytes()
    fn = loaded.signatures[SIGNATURE_MANIFEST]
    rows = fn(**{INPUT_MANIFEST: tf.constant([7, 0, -1], tf.int32)})[OUTPUT_MANIFEST].numpy()
    assert rows.shape == (3,) and all(row == text for row in rows)
    assert parse_manifest(rows[0], where="signature") == read_manifest(exported.version_dir)


def test_a_new_export_keeps_the_pinned_versions_and_labels(exported: Any, tmp_path: Path) -> None:
    """A rollout pins the served versions in models.config; exporting the next candidate
    must not undo that (TF Serving would load it at once under the default latest policy)."""
    import shutil

    base = tmp_path / "models"
    shutil.copytree(exported.model_base, base)
    config = base / MODELS_CONFIG
    write_text_proto(
        config, with_versions(read_models_config(config), "tiny", [1], {STABLE_LABEL: 1})
    )
    export_model(
        exported.model, model_base=base, name="tiny", version=2,
        run_info=exported.run_info, buckets=(1, 2, 4), top_k=3,
    )  # fmt: skip
    entry = model_entry(read_models_config(config), "tiny")
    assert pinned_versions(entry) == [1]
    assert dict(entry.version_labels) == {STABLE_LABEL: 1}


def test_configs_written_beside_models(exported: Any) -> None:
    batching = read_batching_parameters(exported.model_base / BATCHING_CONFIG)
    assert list(batching.allowed_batch_sizes) == [1, 2, 4]
    assert batching.max_batch_size.value == 4
    models = read_models_config(exported.model_base / MODELS_CONFIG)
    [cfg] = models.model_config_list.config
    assert (cfg.name, cfg.base_path, cfg.model_platform) == ("tiny", "/models/tiny", "tensorflow")
    assert not list(exported.version_dir.parent.glob(".tmp-*"))  # no temp dir left behind


def test_existing_version_is_refused_and_untouched(exported: Any) -> None:
    before = _tree_digest(exported.version_dir)
    with pytest.raises(ExportError, match=r"already exists.*version=1"):
        export_model(
            exported.model, model_base=exported.model_base, name="tiny", version=1,
            run_info=exported.run_info, buckets=(1, 2, 4), top_k=3,
        )  # fmt: skip
    assert _tree_digest(exported.version_dir) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": 0}, r"positive integer.*version=0"),
        ({"top_k": 7}, r"top_k \(7\) exceeds"),
        ({"buckets": (4, 2)}, r"strictly increasing"),
        ({"precision": "int8"}, r"precision"),
        ({"name": "bad name"}, r"name='bad name'"),
    ],
)
def test_bad_arguments_fail_before_writing(
    tmp_path: Path, tiny_model: Any, run_info: RunInfo, kwargs: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {"name": "m", "version": 1, "buckets": (1, 2), "top_k": 3}
    args.update(kwargs)
    with pytest.raises(ExportError, match=match):
        export_model(tiny_model, model_base=tmp_path, run_info=run_info, **args)
    assert not list(tmp_path.rglob("saved_model.pb"))


def test_second_model_joins_configs_and_must_share_buckets(
    tmp_path: Path, tiny_model: Any, run_info: RunInfo
) -> None:
    base = tmp_path / "models"
    for name in ("a", "b"):
        export_model(
            tiny_model, model_base=base, name=name, version=1, run_info=run_info, buckets=(1, 2),
            top_k=2,
        )  # fmt: skip
    names = [c.name for c in read_models_config(base / MODELS_CONFIG).model_config_list.config]
    assert names == ["a", "b"]
    with pytest.raises(ExportError, match=r"buckets must match.*buckets=\[1, 4\]"):
        export_model(
            tiny_model, model_base=base, name="c", version=1, run_info=run_info, buckets=(1, 4),
            top_k=2,
        )  # fmt: skip
    assert not (base / "c" / "1").exists()


@pytest.mark.parametrize(
    ("precision", "tolerance"), [("bfloat16", BF16_TOLERANCE), ("float16", FP16_TOLERANCE)]
)
def test_reduced_precision_export_within_tolerance(
    tmp_path: Path, tiny_model: Any, run_info: RunInfo, pixels: np.ndarray, reference: Any,
    precision: str, tolerance: float,
) -> None:  # fmt: skip
    import tensorflow as tf

    from model_builder.verify import verify_export

    version_dir = export_model(
        tiny_model, model_base=tmp_path, name="tiny", version=1, run_info=run_info,
        precision=precision, buckets=(1, 2, 4), top_k=3,
    )  # fmt: skip
    assert read_manifest(version_dir).precision == precision
    out = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_PIXELS](
        images=tf.constant(pixels)
    )
    probs = out[OUTPUT_PROBABILITIES].numpy()
    assert probs.dtype == np.float32  # the wire format does not change with the precision
    expected = reference(tiny_model, pixels)
    diff = np.abs(probs - expected).max()
    assert 0 < diff <= tolerance, diff  # > 0: the model really ran in reduced precision
    assert (probs.argmax(1) == expected.argmax(1)).all()
    assert tiny_model.dtype_policy.name == "float32"  # the source model is left alone
    # Every check of `verify` (parity at the precision's tolerance, warmup run as TF Serving does).
    report = verify_export(version_dir, model=tiny_model, use_cli=False)
    assert report.ok and not report.skipped, report.lines()


def test_cli_export_writes_a_verifiable_version(
    exported: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resnet_serving.cli import main

    base = tmp_path / "models"
    argv = ["export", "--run", str(exported.run_dir), "--model-base", str(base), "--name", "cli"]
    assert main([*argv, "--version", "3", "--buckets", "1,2", "--top-k", "2"]) == 0
    assert "exported cli v3" in capsys.readouterr().out
    m = read_manifest(base / "cli" / "3")
    assert (m.batch_buckets, m.top_k, m.precision) == ((1, 2), 2, "float32")
    assert m.folded_batchnorm is True  # the default, kept on the benchmark's numbers
    assert (base / MODELS_CONFIG).is_file()
    assert main([*argv, "--version", "4", "--buckets", "1,2", "--no-fold-batchnorm"]) == 0
    assert read_manifest(base / "cli" / "4").folded_batchnorm is False


@pytest.mark.parametrize("buckets", ["4,2", "0,1", "1,x", ""])
def test_cli_rejects_bad_buckets(buckets: str, capsys: pytest.CaptureFixture[str]) -> None:
    from resnet_serving.cli import main

    argv = ["export", "--run", "r", "--model-base", "b", "--name", "n", "--version", "1"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--buckets", buckets])
    assert exc.value.code == 2
    assert f"Received: {buckets!r}" in capsys.readouterr().err


def test_cli_existing_version_is_one_line_exit_2(exported: Any) -> None:
    import subprocess
    import sys

    before = _tree_digest(exported.version_dir)
    proc = subprocess.run(
        [
            sys.executable, "-m", "resnet_serving", "export", "--run", str(exported.run_dir),
            "--model-base", str(exported.model_base), "--name", "tiny", "--version", "1",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "already exists" in line
    assert _tree_digest(exported.version_dir) == before


def test_the_export_runs_as_tf_serving_loads_it(
    exported: Any, pixels: np.ndarray, reference: Any
) -> None:
    """TF Serving loads a version with TF's LoadSavedModel into a TF1 Session and runs tensors
    by name; every Keras weight must be restored there, not only under tf.saved_model.load."""
    import tensorflow as tf

    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(exported.version_dir))
        sig = meta.signature_def[SIGNATURE_PIXELS]
        probs = session.run(
            sig.outputs[OUTPUT_PROBABILITIES].name, {sig.inputs[INPUT_PIXELS].name: pixels}
        )
    np.testing.assert_allclose(probs, reference(exported.model, pixels), atol=1e-5)


def test_verify_catches_an_export_tf_serving_cannot_run(
    tiny_model: Any, run_info: RunInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the captured variables tracked (tensorflow/tensorflow#72963) the Session finds
    the Keras weights uninitialised; `verify` must say so, as TF Serving would fail its load."""
    from model_builder import export as export_module
    from model_builder.verify import check_export

    build = export_module.build_serving_module

    def untracked(*args: Any, **kwargs: Any) -> Any:
        module = build(*args, **kwargs)
        del module.captured_variables
        return module

    monkeypatch.setattr(export_module, "build_serving_module", untracked)
    version_dir = export_model(
        tiny_model, model_base=tmp_path, name="tiny", version=1, run_info=run_info,
        buckets=(1,), top_k=3,
    )  # fmt: skip
    [failed] = check_export(version_dir, use_cli=False).failed
    assert failed.name == "warmup" and "fails as TF Serving runs it" in failed.detail
    assert "Could not find variable" in failed.detail or "Read variable failure" in failed.detail
