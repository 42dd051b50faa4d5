"""A bounded atheris run over the decode path (part of `make test`; a longer run is in the README)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("FUZZ_RUNS", "4000"))
# A fixed seed keeps `make test` reproducible (a failure replays exactly); FUZZ_SEED=0 lets
# libFuzzer pick a new one, as the longer documented runs do.
SEED = int(os.environ.get("FUZZ_SEED", "1"))


def test_decode_survives_fuzzing(tmp_path: Path) -> None:
    pytest.importorskip(
        "atheris", reason="atheris is in the dev extra; install with `make install`"
    )
    corpus = tmp_path / "corpus"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "fuzz/make_corpus.py"), str(corpus)], check=True, env=env
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz/fuzz_decode.py"),
            f"-runs={RUNS}",
            f"-seed={SEED}",
            "-max_total_time=60",
            "-rss_limit_mb=2048",
            "-timeout=10",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"fuzzer found a crash:\n{tail}"
    if SEED:  # the run replays: libFuzzer says it used the seed it was given
        assert f"Seed: {SEED}" in proc.stdout + proc.stderr, tail
    assert "Done" in tail or "DONE" in tail, tail
