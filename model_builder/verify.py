"""Check an exported version before it ships: parity, signatures, XLA mark, warmup, manifest.

Each check runs independently and reports one line; `verify_export` raises VerifyError
listing every failed check, `check_export` returns the report for the CLI to print.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from contract import wire
from contract.errors import ManifestError, TensorError
from contract.manifest import LABELS_RELPATH, MANIFEST_RELPATH, Manifest, read_manifest
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
from model_builder.artifacts import MODEL_FILE, load_run_info
from model_builder.errors import ModelBuilderError, VerifyError
from model_builder.preprocess import normalize
from model_builder.warmup import MAX_RECORDS, read_warmup_requests

# Max |p_export - p_keras| per precision. float32 differs only by XLA's fused re-ordering;
# bf16 keeps ~3 significant digits, fp16 ~3.3, and errors accumulate over the layers.
TOLERANCES: dict[str, float] = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}
PARITY_SEED = 1234


@dataclass(frozen=True)
class Check:
    """One verification step: its name, whether it passed, and what was seen.

    A skipped check (nothing to compare against) is not a failure, but it is not a pass
    either: it is reported as SKIP so nobody reads it as verified.
    """

    name: str
    ok: bool
    detail: str
    skipped: bool = False

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.ok else "FAIL"


@dataclass
class VerifyReport:
    """Every check run on one version directory."""

    version_dir: Path
    checks: list[Check] = field(default_factory=list)
    max_abs_diff: float | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.skipped]

    def lines(self) -> list[str]:
        return [f"[{c.verdict}] {c.name}: {c.detail}" for c in self.checks]

    def summary(self) -> str:
        """One closing line: how many passed, failed and were skipped (and which)."""
        if self.failed:
            return f"{len(self.failed)} check(s) failed: {', '.join(c.name for c in self.failed)}"
        passed = len(self.checks) - len(self.skipped)
        if self.skipped:
            names = ", ".join(c.name for c in self.skipped)
            return f"{passed} checks passed, {len(self.skipped)} skipped ({names}): not verified"
        return f"all {passed} checks passed"


def verify_export(
    version_dir: Path,
    run_dir: Path | None = None,
    *,
    tolerance: float | None = None,
    model: Any = None,
    use_cli: bool = True,
) -> VerifyReport:
    """Run every check; raise VerifyError with one line per failed check, else the report."""
    report = check_export(version_dir, run_dir, tolerance=tolerance, model=model, use_cli=use_cli)
    if not report.ok:
        raise VerifyError(
            f"{version_dir} failed {len(report.failed)} check(s):\n"
            + "\n".join(f"  {c.name}: {c.detail}" for c in report.failed)
        )
    return report


def check_export(
    version_dir: Path,
    run_dir: Path | None = None,
    *,
    tolerance: float | None = None,
    model: Any = None,
    use_cli: bool = True,
) -> VerifyReport:
    """Run every check and return the report (nothing raised for failed checks).

    `use_cli=False` reads the SignatureDefs from saved_model.pb directly instead of running
    `saved_model_cli` (same data, without a second TensorFlow start-up).
    """

    version_dir = Path(version_dir)
    report = VerifyReport(version_dir)
    try:
        manifest = read_manifest(version_dir)
    except ManifestError as exc:
        report.checks.append(Check("manifest", False, str(exc)))
        return report  # every other check needs the manifest
    report.checks.append(_check_manifest(version_dir, manifest))
    try:
        loaded = tf.saved_model.load(str(version_dir))
    except Exception as exc:  # any load failure is a verdict, not a crash
        report.checks.append(Check("load", False, f"tf.saved_model.load failed: {exc}"))
        return report
    report.checks.append(Check("load", True, "tf.saved_model.load ok"))

    steps: list[Callable[[], Check]] = [
        lambda: _check_parity(report, loaded, manifest, run_dir, model, tolerance),
        lambda: _check_signatures(version_dir, manifest, use_cli=use_cli),
        lambda: _check_xla(version_dir),
        lambda: _check_warmup(version_dir, loaded, manifest),
    ]
    for step in steps:
        report.checks.append(step())
    return report


def _check_manifest(version_dir: Path, m: Manifest) -> Check:
    problems = []
    if version_dir.name != str(m.model_version):
        problems.append(f"directory {version_dir.name!r} != model_version {m.model_version}")
    if version_dir.parent.name != m.model_name:
        problems.append(f"model directory {version_dir.parent.name!r} != {m.model_name!r}")
    labels_path = version_dir / LABELS_RELPATH
    try:
        labels = tuple(labels_path.read_text(encoding="utf-8").splitlines())
    except OSError as exc:
        labels = ()
        problems.append(f"cannot read {LABELS_RELPATH}: {exc.strerror}")
    if labels and labels != m.labels:
        diff = next(
            (i for i, (a, b) in enumerate(zip(labels, m.labels, strict=False)) if a != b),
            min(len(labels), len(m.labels)),
        )
        problems.append(
            f"{LABELS_RELPATH} differs from the manifest at line {diff + 1} "
            f"({len(labels)} vs {len(m.labels)} labels)"
        )
    if problems:
        return Check("manifest", False, "; ".join(problems))
    return Check("manifest", True, f"{m.model_name} v{m.model_version}, {m.num_classes} labels")


def _check_parity(
    report: VerifyReport,
    loaded: Any,
    m: Manifest,
    run_dir: Path | None,
    model: Any,
    tolerance: float | None,
) -> Check:

    outputs_logits = True
    if model is None and run_dir is None:
        return Check(
            "parity", True, "no --run directory or model given: scores not compared with Keras",
            skipped=True,
        )  # fmt: skip
    try:
        if run_dir is not None:
            info = load_run_info(run_dir)
            outputs_logits = info.outputs_logits
            if model is None:
                model = keras.models.load_model(Path(run_dir) / MODEL_FILE, compile=False)
    except (ModelBuilderError, OSError, ValueError) as exc:
        return Check("parity", False, f"cannot load the Keras model from {run_dir}: {exc}")

    tol = TOLERANCES[m.precision] if tolerance is None else tolerance
    n = max(b for b in m.batch_buckets if b <= 8) if m.batch_buckets[0] <= 8 else m.batch_buckets[0]
    rng = np.random.default_rng(PARITY_SEED)
    pixels = rng.integers(0, 256, (n, m.input.height, m.input.width, 3), dtype=np.uint8)
    out = tf.cast(model(normalize(pixels, m.normalization), training=False), tf.float32)
    expected = np.asarray(tf.nn.softmax(out) if outputs_logits else out)
    got = loaded.signatures[SIGNATURE_PIXELS](**{INPUT_PIXELS: tf.constant(pixels)})
    probs = got[OUTPUT_PROBABILITIES].numpy()
    if probs.shape != expected.shape:
        return Check("parity", False, f"shape {probs.shape} != Keras {expected.shape}")
    diff = float(np.abs(probs - expected).max())
    report.max_abs_diff = diff
    # Top-1 must agree wherever the Keras model's own margin is larger than the tolerance.
    top2 = np.sort(expected, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * tol
    flips = int((probs.argmax(1) != expected.argmax(1))[decisive].sum())
    detail = f"max |diff| {diff:.2e} (tolerance {tol:.0e}, {m.precision}) on {n} images"
    if diff > tol or flips:
        return Check("parity", False, f"{detail}; top-1 changed on {flips} image(s)")
    return Check("parity", True, f"{detail}; same top-1")


def _check_signatures(version_dir: Path, m: Manifest, *, use_cli: bool) -> Check:
    if use_cli:
        cli = Path(sys.executable).parent / "saved_model_cli"
        if not cli.exists():
            return Check("signatures", False, f"saved_model_cli not found at {cli}")
        proc = subprocess.run(
            [str(cli), "show", "--dir", str(version_dir), "--all"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return Check("signatures", False, f"saved_model_cli failed: {last}")
        seen = parse_saved_model_cli(proc.stdout)
        source = "saved_model_cli"
    else:
        seen = signature_table(version_dir)
        source = "saved_model.pb"
    h, w, c, k = m.input.height, m.input.width, m.num_classes, m.top_k
    outputs = {
        OUTPUT_PROBABILITIES: ("DT_FLOAT", f"(-1, {c})"),
        OUTPUT_TOP_K_IDS: ("DT_INT32", f"(-1, {k})"),
        OUTPUT_TOP_K_SCORES: ("DT_FLOAT", f"(-1, {k})"),
    }
    expected = {
        SIGNATURE_PIXELS: {INPUT_PIXELS: ("DT_UINT8", f"(-1, {h}, {w}, 3)"), **outputs},
        SIGNATURE_BYTES: {INPUT_BYTES: ("DT_STRING", "(-1)"), **outputs},
        SIGNATURE_MANIFEST: {
            INPUT_MANIFEST: ("DT_INT32", "(-1)"),
            OUTPUT_MANIFEST: ("DT_STRING", "(-1)"),
        },
    }
    problems = []
    for sig, tensors in expected.items():
        if sig not in seen:
            problems.append(f"signature {sig!r} missing")
            continue
        for name, spec in tensors.items():
            if seen[sig].get(name) != spec:
                problems.append(f"{sig}.{name} is {seen[sig].get(name)}, expected {spec}")
    if problems:
        return Check("signatures", False, "; ".join(problems))
    return Check("signatures", True, f"{', '.join(expected)} as expected ({source})")


def parse_saved_model_cli(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """`saved_model_cli show --all` text -> {signature: {tensor name: (dtype, shape)}}."""
    sigs: dict[str, dict[str, tuple[str, str]]] = {}
    current: dict[str, tuple[str, str]] | None = None
    tensor = dtype = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("signature_def['"):
            current = sigs.setdefault(line.split("'")[1], {})
        elif current is not None and line.endswith("tensor_info:") and "['" in line:
            tensor = line.split("'")[1]
        elif current is not None and tensor and line.startswith("dtype:"):
            dtype = line.split(":", 1)[1].strip()
        elif current is not None and tensor and dtype and line.startswith("shape:"):
            current[tensor] = (dtype, line.split(":", 1)[1].strip())
            tensor = dtype = None
    return sigs


def signature_table(version_dir: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """The same table as `parse_saved_model_cli`, read from saved_model.pb's SignatureDefs."""

    sigs: dict[str, dict[str, tuple[str, str]]] = {}
    for name, sig in _read_saved_model(version_dir).meta_graphs[0].signature_def.items():
        table = sigs.setdefault(name, {})
        for tensors in (sig.inputs, sig.outputs):
            for tname, info in tensors.items():
                dims = [str(d.size) for d in info.tensor_shape.dim]
                shape = "unknown_rank" if info.tensor_shape.unknown_rank else f"({', '.join(dims)})"
                table[tname] = (types_pb2.DataType.Name(info.dtype), shape)
    return sigs


def _read_saved_model(version_dir: Path) -> Any:

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    return sm


def _check_xla(version_dir: Path) -> Check:
    """Both signatures must reach a function whose `_XlaMustCompile` attr is true."""
    graph = _read_saved_model(version_dir).meta_graphs[0]
    functions = {f.signature.name: f for f in graph.graph_def.library.function}
    nodes = {n.name: n for n in graph.graph_def.node}

    def compiled(fname: str, seen: set[str]) -> bool:
        if fname in seen or fname not in functions:
            return False
        seen.add(fname)
        fn = functions[fname]
        attr = fn.attr.get("_XlaMustCompile")
        if attr is not None and attr.b:
            return True
        return any(compiled(nd.attr["f"].func.name, seen) for nd in fn.node_def if "f" in nd.attr)

    missing = []
    for sig in (SIGNATURE_PIXELS, SIGNATURE_BYTES):
        sig_def = graph.signature_def.get(sig)
        if sig_def is None:
            missing.append(f"{sig} (absent)")
            continue
        out = next(iter(sig_def.outputs.values())).name.split(":")[0]
        node = nodes.get(out)
        if node is None or "f" not in node.attr or not compiled(node.attr["f"].func.name, set()):
            missing.append(sig)
    if missing:
        return Check("xla", False, f"no _XlaMustCompile=true function behind {missing}")
    return Check("xla", True, "both signatures call a function marked _XlaMustCompile")


def _check_warmup(version_dir: Path, loaded: Any, m: Manifest) -> Check:
    """Every record parses and runs, and the records are exactly one per (client call,
    bucket): a call a client sends at a bucket with no record would compile on TF Serving's
    request path (contract.signatures.CLIENT_CALLS)."""
    try:
        requests = read_warmup_requests(version_dir)
    except Exception as exc:  # a corrupt TFRecord or proto is a verdict
        return Check("warmup", False, f"cannot parse warmup records: {exc}")
    outputs = {s: tuple(sorted(loaded.signatures[s].structured_outputs)) for s in loaded.signatures}
    try:
        session = _SessionBundle(version_dir)
    except Exception as exc:  # a load failure is a verdict
        return Check("warmup", False, f"cannot load as TF Serving does (TF1 Session): {exc}")
    problems: list[str] = []
    seen: list[WarmupKey] = []
    ran: set[tuple[str, int]] = set()
    for i, req in enumerate(requests):
        sig = req.model_spec.signature_name or SIGNATURE_PIXELS
        if req.model_spec.name != m.model_name or sig not in _WARMUP_INPUTS:
            problems.append(f"record {i} targets {req.model_spec.name}/{sig}")
            continue
        name, (dtype, shape) = _WARMUP_INPUTS[sig](m)
        try:
            batch = wire.tensor_array(
                req.inputs[name], dtype=dtype, shape=shape, name=f"record {i} {name}"
            )
        except (TensorError, IndexError, KeyError) as exc:
            problems.append(str(exc))
            continue
        n = int(batch.shape[0])
        seen.append(WarmupKey(sig, n, tuple(sorted(req.output_filter)) or outputs[sig]))
        if (sig, n) in ran:
            continue  # the output filter does not change what the loaded function computes
        ran.add((sig, n))
        output = OUTPUT_MANIFEST if sig == SIGNATURE_MANIFEST else OUTPUT_PROBABILITIES
        try:
            got = session.run(sig, name, batch, output)
        except tf.errors.OpError as exc:
            problems.append(f"record {i} fails as TF Serving runs it: {exc.message.strip()[:300]}")
            continue
        if sig == SIGNATURE_MANIFEST:
            problems += _manifest_rows(i, got, n, version_dir)
        elif got.shape != (n, m.num_classes):
            problems.append(f"record {i} returned {got.shape}")
    want = required_warmup(m, outputs)
    missing = sorted(set(want) - set(seen))
    extra = sorted(set(seen) - set(want))
    if missing:
        problems.append(f"no record for {[_key_text(k) for k in missing]}")
    if extra or len(seen) != len(set(seen)):
        problems.append(f"records beyond one per call and bucket: {[_key_text(k) for k in extra]}")
    session.close()
    if len(requests) > MAX_RECORDS:
        problems.append(f"{len(requests)} records; TF Serving reads at most {MAX_RECORDS}")
    if problems:
        return Check("warmup", False, "; ".join(problems))
    return Check(
        "warmup",
        True,
        f"{len(requests)} records: {len(CLIENT_CALLS)} client calls x buckets {list(m.batch_buckets)}",
    )


class _SessionBundle:
    """The export loaded as TF Serving loads it (TF's LoadSavedModel into a TF1 Session) and
    run by tensor name: what `tf.saved_model.load` forgives, this does not (an export whose
    variables the Session never restores fails here as it fails in TF Serving)."""

    def __init__(self, version_dir: Path) -> None:
        self._session = tf.compat.v1.Session(graph=tf.Graph())
        meta = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], str(version_dir))
        self._signatures = meta.signature_def

    def run(self, signature: str, name: str, batch: np.ndarray, output: str) -> np.ndarray:
        sig = self._signatures[signature]
        fetch = sig.outputs[output].name
        return np.asarray(self._session.run(fetch, {sig.inputs[name].name: batch}))

    def close(self) -> None:
        self._session.close()


def _manifest_rows(record: int, rows: np.ndarray, n: int, version_dir: Path) -> list[str]:
    """`serving_manifest` must answer one row per input row, each the manifest file's text:
    the gateway reads the contract from it instead of the file."""
    text = (version_dir / MANIFEST_RELPATH).read_bytes()
    if rows.shape != (n,):
        return [f"record {record} ({SIGNATURE_MANIFEST}) returned shape {rows.shape}"]
    if any(bytes(row) != text for row in rows):
        return [f"record {record}: {SIGNATURE_MANIFEST} does not return {MANIFEST_RELPATH}"]
    return []


class WarmupKey(NamedTuple):
    """What TF Serving runs for one request: signature, batch size, fetched outputs (sorted)."""

    signature: str
    batch_size: int
    outputs: tuple[str, ...]


# The input tensor a warmup record of each signature carries: name, (dtype, shape).
_WARMUP_INPUTS: dict[str, Callable[[Manifest], tuple[str, tuple[str, tuple[int | None, ...]]]]] = {
    SIGNATURE_PIXELS: lambda m: (INPUT_PIXELS, ("uint8", (None, m.input.height, m.input.width, 3))),
    SIGNATURE_BYTES: lambda m: (INPUT_BYTES, ("string", (None,))),
    SIGNATURE_MANIFEST: lambda m: (INPUT_MANIFEST, ("int32", (None,))),
}


def required_warmup(m: Manifest, outputs: dict[str, tuple[str, ...]]) -> list[WarmupKey]:
    """Every (signature, bucket, outputs) a client sends: CLIENT_CALLS x the manifest's buckets."""
    return [
        WarmupKey(call.signature, b, tuple(sorted(call.output_filter)) or outputs[call.signature])
        for call in CLIENT_CALLS
        for b in m.batch_buckets
    ]


def _key_text(key: WarmupKey) -> str:
    return f"{key.signature} batch {key.batch_size} -> {','.join(key.outputs)}"
