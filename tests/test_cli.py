"""The entry point: help works without TensorFlow, user errors are one line and exit 2."""

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resnet_serving", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_usage() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "usage: resnet-serving" in proc.stdout


def test_unknown_command_is_usage_error() -> None:
    proc = run_cli("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
