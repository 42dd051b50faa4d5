"""The entry point: help works without TensorFlow, user errors are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("tensorflow", "keras", "tensorflow_serving", "uvicorn", "fastapi", "matplotlib")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resnet_serving", *args], capture_output=True, text=True, timeout=120
    )


def modules_loaded_by(argv: list[str]) -> tuple[int, list[str], str]:
    """Run `main(argv)` in a fresh interpreter: exit code, heavy modules it loaded, stderr."""
    code = (
        "import sys\n"
        "from resnet_serving.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        f"print(rc, sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    rc, _, loaded = proc.stdout.strip().splitlines()[-1].partition(" ")
    return int(rc), eval(loaded), proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["serve", "--help"],
        ["train", "--help"],
        ["loadtest", "run", "--help"],
        ["bench", "--help"],
        ["standin", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_no_tensorflow_nor_the_server(argv: list[str]) -> None:
    rc, loaded, _ = modules_loaded_by(argv)
    assert rc == 0
    assert loaded == [], f"`resnet-serving {' '.join(argv)}` imported {loaded}"


def test_help_lists_usage() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "usage: resnet-serving" in proc.stdout


def test_unknown_command_is_usage_error() -> None:
    proc = run_cli("no-such-command")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: resnet-serving: argument COMMAND: invalid choice")
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, no usage dump


def test_a_user_error_is_one_line_and_exit_2() -> None:
    rc, _, stderr = modules_loaded_by(["export", "--run", "/nonexistent", "--model-base",
                                            "/tmp", "--name", "x", "--version", "1"])  # fmt: skip
    assert rc == 2
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, stderr
