"""`resnet-serving build`: a run directory that `export` can read, and one-line user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from model_builder import cli as builder_cli
from model_builder import preprocess
from model_builder.artifacts import load_run_info
from model_builder.resnet import ARCHITECTURES, build_model
from resnet_serving.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "resnet_serving", "build", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


def test_help_names_every_architecture() -> None:
    assert set(builder_cli.ARCH_NAMES) == set(ARCHITECTURES)


def test_build_writes_run_dir(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("--arch", "resnet_cifar", "--width", "4", "--classes", "5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "built resnet_cifar: 18,037 params" in proc.stdout
    assert "logits [batch, 5]" in proc.stdout
    info = load_run_info(out)
    assert info.architecture == "resnet_cifar"
    assert (info.input_height, info.input_width) == (32, 32)
    assert info.labels == tuple(f"class_{i}" for i in range(5))
    assert info.normalization == preprocess.UNIT_SCALE
    assert info.preprocessing.crop_fraction == 1.0
    model = keras.models.load_model(out / "model.keras")
    assert model.output_shape == (None, 5)


def test_unknown_arch_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("--arch", "resnet51", "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "Received: arch='resnet51'")
    assert not (tmp_path / "run").exists()


def test_wrong_shape_weights_is_one_line(tmp_path: Path) -> None:
    weights = tmp_path / "w.weights.h5"
    build_model("resnet_cifar", width=2).save_weights(weights)
    proc = run_cli("--arch", "resnet_cifar", "--width", "4", "--weights", str(weights),
                   "--out", str(tmp_path / "run"))  # fmt: skip
    assert_one_line_error(
        proc, "layer 'conv1_conv' expects shapes [(3, 3, 3, 4), (4,)] but the file has"
    )
    assert not (tmp_path / "run").exists()


# In-process from here: the same `main` the console script calls, without a TF start-up each.


def test_labels_file_sets_classes_and_user_weights_load(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\nbird\n", encoding="utf-8")
    source = build_model("toy_cifar10", num_classes=3)
    weights = tmp_path / "toy.keras"
    source.save(weights)
    out = tmp_path / "run"
    rc = main(["build", "--arch", "toy_cifar10", "--labels", str(labels),
               "--weights", str(weights), "--out", str(out)])  # fmt: skip
    assert rc == 0
    assert load_run_info(out).labels == ("cat", "dog", "bird")
    x = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    saved = keras.models.load_model(out / "model.keras")
    np.testing.assert_allclose(saved(x), source(x), rtol=1e-5, atol=1e-5)


def test_imagenet_run_records_caffe_normalisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # A stand-in for keras.applications' file, in its legacy layout (see test_weights.py).
    cached = tmp_path / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    cached.parent.mkdir()
    with h5py.File(cached, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(
            f, build_model("resnet50", input_size=32, width=4)
        )
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    out = tmp_path / "run"
    rc = main(["build", "--arch", "resnet50", "--width", "4", "--input-size", "32",
               "--classes", "4", "--weights", "imagenet", "--out", str(out)])  # fmt: skip
    assert rc == 0
    info = load_run_info(out)
    assert info.normalization == preprocess.IMAGENET_CAFFE
    assert info.preprocessing.crop_fraction == 0.875
    assert info.notes["weights"] == "imagenet"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--classes", "3"], "--classes must match the 2 labels"),
        (["--classes", "1"], "Received: num_classes=1"),
        (["--weights", "nowhere.keras"], "weights file not found"),
    ],
)
def test_user_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str
) -> None:
    argv = ["build", "--arch", "resnet_cifar", "--width", "2", "--out", str(tmp_path / "r")]
    if "--classes" in extra and extra[1] == "3":
        (tmp_path / "l.txt").write_text("a\nb\n", encoding="utf-8")
        argv += ["--labels", str(tmp_path / "l.txt")]
    assert main([*argv, *extra]) == 2
    assert fragment in capsys.readouterr().err


def test_refuses_non_empty_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    assert main(["build", "--arch", "resnet_cifar", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and str(tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
