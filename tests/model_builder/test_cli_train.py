"""`train`, `make-dataset` and `demo` from the command line: real subprocesses for the exit
codes and one-line errors, one tiny end-to-end CLI run, and the demo export in-process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from model_builder.datasets import write_image_folder
from model_builder.errors import ModelBuilderError
from model_builder.shapes import SHAPE_CLASSES

TINY_TRAIN = ("--epochs", "1", "--width", "4", "--input-size", "16", "--batch-size", "16")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resnet_serving", *args], capture_output=True, text=True, timeout=300
    )


def _bad_datasets(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (dataset folder, expected start of the error message)."""
    (root / "empty").mkdir()
    write_image_folder(root / "one", 1, 16, 0)
    for name in SHAPE_CLASSES[1:]:
        (root / "one" / name / "00000.png").unlink()
        (root / "one" / name).rmdir()
    write_image_folder(root / "noimg", 1, 16, 0)
    (root / "noimg" / "zebra").mkdir()
    write_image_folder(root / "corrupt", 1, 16, 0)
    (root / "corrupt" / "star" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return {
        "missing": (root / "missing", "error: dataset folder does not exist"),
        "empty": (root / "empty", "error: dataset folder is empty"),
        "one_class": (root / "one", "error: dataset needs at least 2 class folders"),
        "class_without_images": (root / "noimg", "error: class folder"),
        "corrupt": (root / "corrupt", "error: cannot decode image"),
    }


def test_train_reports_each_bad_dataset_in_one_line(tmp_path: Path) -> None:
    """All cases run as parallel subprocesses: each exits 2 with one `error:` line."""
    cases = _bad_datasets(tmp_path)
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "resnet_serving",
                "train",
                "--data",
                str(folder),
                "--out",
                str(tmp_path / f"run-{name}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (folder, _) in cases.items()
    }
    errors = {}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, stderr)
        assert "Traceback" not in stderr, name
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(cases[name][1]), (name, stderr)
        assert not (tmp_path / f"run-{name}").exists(), name
        errors[name] = lines[0]
    assert str(tmp_path / "corrupt" / "star" / "broken.png") in errors["corrupt"]


def test_make_dataset_then_train_on_the_folder(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    made = run_cli("make-dataset", "--out", str(data), "--samples-per-class", "4", "--size", "20")
    assert made.returncode == 0, made.stderr
    assert "wrote 40 images in 10 classes" in made.stdout
    assert Image.open(data / "circle" / "00000.png").size == (20, 20)

    proc = run_cli("train", "--data", str(data), "--out", str(run), *TINY_TRAIN)
    assert proc.returncode == 0, proc.stderr
    assert "epoch   1/1" in proc.stdout and "validation accuracy" in proc.stdout
    assert (run / "model.keras").is_file() and (run / "run.json").is_file()

    again = run_cli("train", "--data", str(data), "--out", str(run), *TINY_TRAIN)
    assert again.returncode == 2
    assert (
        again.stderr.startswith("error: run directory is not empty")
        and "Traceback" not in again.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--data", "builtin:cifar"), "error: unknown built-in dataset"),
        (("--data", "some/dir", "--samples-per-class", "3"), "error: --samples-per-class applies"),
        (("--data", "builtin:shapes", "--val-split", "1.5"), "error: val_split must be in (0, 1)"),
    ],
)
def test_train_argument_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = run_cli("train", *args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and "Traceback" not in proc.stderr


def test_make_dataset_examples_and_refusal(tmp_path: Path) -> None:
    proc = run_cli("make-dataset", "--examples", "--size", "256", "--out", str(tmp_path / "ex"))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "ex").glob("*.png"))) == len(SHAPE_CLASSES)
    assert len(list((tmp_path / "ex").glob("*.jpg"))) == len(SHAPE_CLASSES)
    refused = run_cli("make-dataset", "--out", str(tmp_path / "ex"))
    assert refused.returncode == 2 and refused.stderr.startswith(
        "error: output folder is not empty"
    )


def test_demo_trains_exports_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """The demo recipe, shrunk to seconds, through the real export (in-process: no TF start)."""
    from contract.manifest import read_manifest
    from model_builder.demo import run_demo

    lines: list[str] = []
    tiny: dict[str, Any] = {"epochs": 1, "samples_per_class": 3, "width": 4, "input_size": 16}
    base = tmp_path / "models"
    version_dir = run_demo(base, log=lines.append, **tiny)
    assert version_dir == base / "demo" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    manifest = read_manifest(version_dir)
    assert manifest.labels == SHAPE_CLASSES and manifest.input.height == 16
    assert (tmp_path / "runs" / "demo-1" / "run.json").is_file()  # the run is kept, complete
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")]
    assert any(line.startswith("demo: exporting") for line in lines)
    assert any(line.startswith("verify: [PASS] warmup") for line in lines), lines

    with pytest.raises(
        ModelBuilderError, match=r"already exists: remove it or pass another --version"
    ):
        run_demo(base, log=lines.append, **tiny)
    lines.clear()
    run_demo(base, version=2, run_dir=tmp_path / "runs" / "demo-1", log=lines.append)
    assert any("reusing the finished training run" in line for line in lines)
    assert (base / "demo" / "2" / "saved_model.pb").is_file()
