"""Issue 18's ten deliberate bugs, put back one at a time: which tests catch each one now?

Each bug is a small text edit of one product file. For each, the work tree is copied to a
scratch folder (as `benchmarks.mutation` does), the edit applied there, and the tests where
it could show run against that copy; the failing tests are the ones that catch it. A bug that
no test catches is printed as UNNOTICED and makes the exit code 1. The checkout is never
touched. An edit whose original text is gone (the code moved on) is reported, not skipped.

    python -m benchmarks.deliberate_bugs                    # all ten (~10 min on 2 busy cores)
    python -m benchmarks.deliberate_bugs --only float_val breaker
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.mutation import ROOT, scratch_copy


@dataclass(frozen=True)
class Bug:
    """One deliberate bug: replace `old` by `new` in `path`, then run `tests`."""

    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS: tuple[Bug, ...] = (
    Bug("bucket_for", "`Manifest.bucket_for` picks the next bucket up (`>=` to `>`)",
        "contract/manifest.py", "            if b >= n:\n", "            if b > n:\n",
        ("tests/contract", "tests/service/test_batcher.py")),
    Bug("deadline_check", "the batcher's deadline check removed", "service/batcher.py",
        "            if item.deadline <= now + expected:\n", "            if False:\n",
        ("tests/service/test_batcher.py", "tests/service/test_admission.py",
         "tests/service/test_app.py")),
    Bug("exif_5_7", "EXIF orientations 5 and 7 swapped in decode", "service/decode.py",
        "    5: Image.Transpose.TRANSPOSE,\n    6: Image.Transpose.ROTATE_270,\n"
        "    7: Image.Transpose.TRANSVERSE,\n",
        "    5: Image.Transpose.TRANSVERSE,\n    6: Image.Transpose.ROTATE_270,\n"
        "    7: Image.Transpose.TRANSPOSE,\n",
        ("tests/service/test_decode.py",)),
    Bug("max_pixels", "`max_image_pixels` check skipped", "service/decode.py",
        "    if w * h > limits.max_image_pixels:\n", "    if False:\n",
        ("tests/service/test_decode.py", "tests/service/test_bad_input.py")),
    Bug("queue_full_500", "queue full answered 500 instead of 503", "service/errors.py",
        'class QueueFull(Unavailable):\n    code = "queue_full"\n',
        'class QueueFull(Unavailable):\n    code = "queue_full"\n    status = 500\n',
        ("tests/service/test_batcher.py", "tests/service/test_api.py",
         "tests/service/test_admission.py")),
    Bug("warmup_int32", "warmup records written as int32", "model_builder/warmup.py",
        "dtype=tfs_protos.DataType.DT_UINT8, int_val=[WARMUP_PIXEL]",
        "dtype=tfs_protos.DataType.DT_INT32, int_val=[WARMUP_PIXEL]",
        ("tests/model_builder/test_export.py", "tests/model_builder/test_verify.py",
         "tests/service/test_tfserving_warmup.py")),
    Bug("float_val_reversed", "`float_val` replies read in reverse order",
        "service/backends/tfserving.py",
        "    try:\n        return wire.tensor_array(\n            proto,",
        "    if not proto.tensor_content and len(proto.float_val) > 1:\n"
        "        values = list(proto.float_val)[::-1]\n"
        "        proto = type(proto).FromString(proto.SerializeToString())\n"
        "        del proto.float_val[:]\n"
        "        proto.float_val.extend(values)\n"
        "    try:\n        return wire.tensor_array(\n            proto,",
        ("tests/service/test_tfserving_client.py", "tests/contract/test_wire.py",
         "tests/service/test_integration.py")),
    Bug("record_neutral_noop", "the breaker's `record_neutral` made a no-op", "service/breaker.py",
        '(e.g. cancelled)."""\n        self._probe_in_flight = False',
        '(e.g. cancelled)."""',
        ("tests/service/test_breaker.py", "tests/service/test_tfserving_client.py")),
    Bug("estimate_never_down", "the admission estimate never comes down", "service/admission.py",
        "        self._recent.setdefault(bucket, deque(maxlen=WINDOW)).append(backend_s)\n",
        "        window = self._recent.setdefault(bucket, deque(maxlen=WINDOW))\n"
        "        window.append(max([backend_s, *window]))\n",
        ("tests/service/test_admission.py", "tests/service/test_batcher.py")),
    Bug("watchdog_removed", "the loadtest per-request timeout watchdog removed",
        "loadtest/engine.py", "        target.expire(now())\n", "        pass\n",
        ("tests/loadtest",)),
)  # fmt: skip
BY_NAME = {b.name: b for b in BUGS}
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def run_bug(bug: Bug, workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Apply `bug` on a scratch copy and run its tests; the failing test ids."""
    scratch = workdir / bug.name
    scratch_copy(scratch)
    target = scratch / bug.path
    text = target.read_text(encoding="utf-8")
    if text.count(bug.old) != 1:
        return {"bug": bug.name, "error": f"the original text is not in {bug.path} exactly once"}
    target.write_text(text.replace(bug.old, bug.new), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(scratch), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
           "--timeout=120", *bug.tests]  # fmt: skip
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=timeout_s)  # fmt: skip
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        out = f"{partial}\nTIMEOUT after {timeout_s} s"
    counts = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    summary = counts[-1] if counts else "no test summary (see the log)"
    return {
        "bug": bug.name, "what": bug.what, "tests": list(bug.tests),
        "caught_by": sorted(set(FAILED.findall(out))), "summary": summary.strip("= "),
        "wall_s": round(time.monotonic() - t0, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BY_NAME), default=list(BY_NAME))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/resnet-serving-bugs"))
    parser.add_argument("--timeout-s", type=float, default=900, help="bound on one bug's tests")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = []
    for name in args.only:
        result = run_bug(BY_NAME[name], args.workdir, args.timeout_s)
        results.append(result)
        caught = result.get("caught_by")
        verdict = result.get("error") or (
            f"caught by {len(caught)} test(s)" if caught else "UNNOTICED"
        )
        print(f"{name}: {verdict} ({result.get('summary', '')})", flush=True)
        for test in caught or []:
            print(f"    {test}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    bad = [r for r in results if r.get("error") or not r.get("caught_by")]
    return 1 if bad else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
