"""verify_export: passes on a good export, names the failed check on a tampered one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract import tfs_protos
from contract.manifest import LABELS_RELPATH, MANIFEST_RELPATH, WARMUP_RELPATH, read_manifest
from contract.signatures import (
    CLIENT_CALLS,
    GATEWAY_CALL,
    INPUT_PIXELS,
    MANIFEST_CALL,
    SIGNATURE_BYTES,
    ClientCall,
)
from contract.tfs_protos import PredictionLog
from model_builder.artifacts import MODEL_FILE
from model_builder.errors import VerifyError
from model_builder.verify import (
    _check_xla,
    check_export,
    parse_saved_model_cli,
    verify_export,
)
from model_builder.warmup import read_warmup_requests, write_warmup_requests


def _copy(exported: Any, tmp_path: Path) -> Path:
    target = tmp_path / "tiny" / "1"
    shutil.copytree(exported.version_dir, target)
    return target


def test_good_export_passes_every_check(exported: Any) -> None:
    report = verify_export(exported.version_dir, exported.run_dir, use_cli=False)
    assert [c.name for c in report.checks] == [
        "manifest", "load", "parity", "signatures", "xla", "warmup",
    ]  # fmt: skip
    assert report.ok
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    assert "same top-1" in next(c.detail for c in report.checks if c.name == "parity")


def test_manifest_file_edited_after_export_fails(exported: Any, tmp_path: Path) -> None:
    """The file and `serving_manifest` are one contract: a gateway reading either must see
    the same one, so an edit to the file alone is caught."""
    version_dir = _copy(exported, tmp_path)
    path = version_dir / MANIFEST_RELPATH
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('"created_at": "', '"created_at": "edited '), encoding="utf-8")
    [failed] = check_export(version_dir, use_cli=False).failed
    assert failed.name == "warmup"
    assert "serving_manifest does not return assets.extra/manifest.json" in failed.detail


def test_edited_labels_fail_with_the_line(exported: Any, tmp_path: Path) -> None:
    version_dir = _copy(exported, tmp_path)
    labels_path = version_dir / LABELS_RELPATH
    lines = labels_path.read_text(encoding="utf-8").splitlines()
    lines[2] = "not_a_class"
    labels_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(
        VerifyError, match=r"failed 1 check.*\n  manifest: .*labels.txt differs.*line 3"
    ):
        verify_export(version_dir, use_cli=False)


@pytest.mark.parametrize(
    ("calls", "buckets", "missing"),
    [
        (CLIENT_CALLS, (1, 2), "serving_default batch 4 -> probabilities'"),
        (  # the gateway's output filter: its first request per bucket would compile
            [c for c in CLIENT_CALLS if c != GATEWAY_CALL],
            (1, 2, 4),
            "serving_default batch 2 -> probabilities'",
        ),
        (  # an encoded-image client
            [c for c in CLIENT_CALLS if c.signature != SIGNATURE_BYTES],
            (1, 2, 4),
            "serving_bytes batch 1 -> probabilities,top_k_ids,top_k_scores",
        ),
        (  # the gateway reading the contract of a new version
            [c for c in CLIENT_CALLS if c != MANIFEST_CALL],
            (1, 2, 4),
            "serving_manifest batch 1 -> manifest'",
        ),
    ],
)
def test_warmup_missing_a_client_call_fails(
    exported: Any, tmp_path: Path, calls: list[ClientCall], buckets: tuple[int, ...], missing: str
) -> None:
    version_dir = _copy(exported, tmp_path)
    (version_dir / WARMUP_RELPATH).unlink()
    write_warmup_requests(
        version_dir, model_name="tiny", height=16, width=16, buckets=buckets, calls=calls
    )
    report = check_export(version_dir, use_cli=False)
    [failed] = report.failed
    assert failed.name == "warmup"
    assert "no record for" in failed.detail and missing in failed.detail


def test_warmup_with_a_duplicate_record_fails(exported: Any, tmp_path: Path) -> None:
    version_dir = _copy(exported, tmp_path)
    (version_dir / WARMUP_RELPATH).unlink()
    calls = [*CLIENT_CALLS, GATEWAY_CALL]
    write_warmup_requests(
        version_dir, model_name="tiny", height=16, width=16, buckets=(1, 2, 4), calls=calls
    )
    [failed] = check_export(version_dir, use_cli=False).failed
    assert "beyond one per call and bucket" in failed.detail


def test_parity_fails_against_a_different_model(exported: Any, fresh_model: Any) -> None:
    other = fresh_model()
    dense = other.get_layer("predictions")
    dense.kernel.assign(np.random.default_rng(9).normal(size=dense.kernel.shape))
    report = check_export(exported.version_dir, model=other, use_cli=False)
    assert [c.name for c in report.failed] == ["parity"]
    assert "max |diff|" in report.failed[0].detail


def test_missing_manifest_stops_early(exported: Any, tmp_path: Path) -> None:
    version_dir = _copy(exported, tmp_path)
    (version_dir / MANIFEST_RELPATH).unlink()
    with pytest.raises(VerifyError, match="manifest: no manifest at"):
        verify_export(version_dir, use_cli=False)


def test_xla_check_fails_without_jit(tmp_path: Path) -> None:
    import tensorflow as tf

    module = tf.Module()
    module.f = tf.function(
        lambda x: {"y": x * 2.0}, input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    tf.saved_model.save(
        module,
        str(tmp_path),
        signatures={"serving_default": module.f.get_concrete_function()},
    )
    check = _check_xla(tmp_path)
    assert not check.ok
    assert "serving_default" in check.detail and "serving_bytes (absent)" in check.detail


def test_parse_saved_model_cli_text() -> None:
    text = """
signature_def['serving_default']:
  The given SavedModel SignatureDef contains the following input(s):
    inputs['images'] tensor_info:
        dtype: DT_UINT8
        shape: (-1, 16, 16, 3)
        name: serving_default_images:0
  The given SavedModel SignatureDef contains the following output(s):
    outputs['probabilities'] tensor_info:
        dtype: DT_FLOAT
        shape: (-1, 6)
        name: StatefulPartitionedCall:0
"""
    assert parse_saved_model_cli(text) == {
        "serving_default": {
            "images": ("DT_UINT8", "(-1, 16, 16, 3)"),
            "probabilities": ("DT_FLOAT", "(-1, 6)"),
        }
    }


def test_cli_verify_prints_checks_and_exits_by_result(
    exported: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resnet_serving.cli import main

    assert main(["verify", str(exported.version_dir), "--run", str(exported.run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("[PASS]") == 6 and "all 6 checks passed" in out
    assert "as expected (saved_model_cli)" in out

    version_dir = _copy(exported, tmp_path)
    (version_dir / MANIFEST_RELPATH).unlink()  # stops before the slow checks
    assert main(["verify", str(version_dir)]) == 2
    captured = capsys.readouterr()
    assert "[FAIL] manifest:" in captured.out
    assert "1 check(s) failed: manifest" in captured.err


def test_without_a_run_parity_is_reported_skipped_not_passed(
    exported: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from resnet_serving.cli import main

    report = check_export(exported.version_dir, use_cli=False)
    assert report.ok and [c.name for c in report.skipped] == ["parity"]
    assert "[SKIP] parity: no --run directory" in report.lines()[2]
    assert main(["verify", str(exported.version_dir)]) == 0
    out = capsys.readouterr().out
    assert "[SKIP] parity" in out and "[PASS] parity" not in out
    assert out.count("[PASS]") == 5
    assert "5 checks passed, 1 skipped (parity): not verified" in out
    assert "all 6 checks passed" not in out


def test_signatures_that_differ_from_the_manifest_fail(exported: Any, tmp_path: Path) -> None:
    """The manifest promises top_k 4; the SavedModel's signatures answer 3."""
    version_dir = _copy(exported, tmp_path)
    path = version_dir / MANIFEST_RELPATH
    path.write_text(path.read_text(encoding="utf-8").replace('"top_k": 3', '"top_k": 4'))
    assert read_manifest(version_dir).top_k == 4
    checks = {c.name: c for c in check_export(version_dir, use_cli=False).failed}
    # The serving_manifest signature still returns the manifest it was exported with.
    assert set(checks) == {"signatures", "warmup"}
    assert "serving_manifest does not return assets.extra/manifest.json" in checks["warmup"].detail
    failed = checks["signatures"]
    assert "serving_default.top_k_ids is ('DT_INT32', '(-1, 3)'), expected" in failed.detail
    assert "serving_bytes.top_k_scores is ('DT_FLOAT', '(-1, 3)')" in failed.detail


def test_a_warmup_record_of_the_wrong_dtype_fails(exported: Any, tmp_path: Path) -> None:
    """TF Serving would refuse an int32 pixel record at load; verify must refuse it first."""
    import tensorflow as tf

    version_dir = _copy(exported, tmp_path)
    requests = read_warmup_requests(version_dir)
    pixels = next(r for r in requests if r.model_spec.signature_name != SIGNATURE_BYTES)
    pixels.inputs[INPUT_PIXELS].dtype = tfs_protos.DataType.DT_INT32
    with tf.io.TFRecordWriter(str(version_dir / WARMUP_RELPATH)) as writer:
        for request in requests:
            log = PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    [failed] = check_export(version_dir, use_cli=False).failed
    assert failed.name == "warmup"
    assert "int32" in failed.detail and "uint8" in failed.detail, failed.detail


def test_a_model_whose_top_1_flips_fails_parity(exported: Any, fresh_model: Any) -> None:
    """The same scores under other labels (the classes rotated by one): every top-1 changes."""
    rotated = fresh_model()
    dense = rotated.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    report = check_export(exported.version_dir, model=rotated, use_cli=False)
    [failed] = report.failed
    assert failed.name == "parity"
    assert "top-1 changed on 4 image(s)" in failed.detail, (
        failed.detail
    )  # 4: the largest bucket <= 8


def test_an_export_that_does_not_load_fails_and_stops(exported: Any, tmp_path: Path) -> None:
    version_dir = _copy(exported, tmp_path)
    (version_dir / "saved_model.pb").write_bytes(b"not a SavedModel")
    report = check_export(version_dir, use_cli=False)
    assert [(c.name, c.ok) for c in report.checks] == [("manifest", True), ("load", False)]
    assert "tf.saved_model.load failed" in report.checks[1].detail
    with pytest.raises(VerifyError, match=r"failed 1 check.*\n  load: "):
        verify_export(version_dir, use_cli=False)


def test_a_run_without_its_keras_model_fails_parity(exported: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(exported.run_dir, run_dir)
    (run_dir / MODEL_FILE).unlink()
    [failed] = check_export(exported.version_dir, run_dir, use_cli=False).failed
    assert failed.name == "parity" and "cannot load the Keras model" in failed.detail
