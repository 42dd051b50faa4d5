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

# libFuzzer's -rss_limit_mb watches the process's *peak* RSS (getrusage's ru_maxrss), and Linux
# carries a peak across exec from the process that spawned it: subprocess starts a child with
# vfork, so the fuzzer began at pytest's own peak (2.5 GB late in `make test`, with TensorFlow
# models loaded) and reported "out-of-memory" on an innocent input, in two fresh-clone runs.
# This launcher forks (the child's peak is the small launcher's) and execs the fuzzer there.
LAUNCH = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[1], sys.argv[1:])\n"
    "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
)


def with_own_peak_rss(cmd: list[str]) -> list[str]:
    """`cmd`, started so that its peak RSS counts only its own memory."""
    return [sys.executable, "-c", LAUNCH, *cmd]


def test_the_fuzzer_starts_with_its_own_peak_rss() -> None:
    np = pytest.importorskip("numpy")
    big = np.ones(400_000_000 // 8)  # raise this process's peak RSS by 400 MB, then free it
    del big
    probe = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    plain = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                               check=True, timeout=60).stdout)  # fmt: skip
    launched = int(subprocess.run(with_own_peak_rss([sys.executable, "-c", probe]),
                                  capture_output=True, text=True, check=True,
                                  timeout=60).stdout)  # fmt: skip
    if plain < 400:
        pytest.skip(f"this kernel does not carry a peak RSS across exec ({plain} MB)")
    assert launched < 200, f"the launched child started at a {launched} MB peak"


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
        with_own_peak_rss(
            [
                sys.executable,
                str(ROOT / "fuzz/fuzz_decode.py"),
                f"-runs={RUNS}",
                f"-seed={SEED}",
                "-max_total_time=60",
                "-rss_limit_mb=2048",
                "-timeout=10",
                str(corpus),
            ]
        ),
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
