"""`loadtest sweep`'s TF Serving half and the batch-bucket rules of both halves.

No TF Serving here: the "restart command" records the batching file it is given, and an
echo server stands in for the gateway in front of TF Serving (it answers /readyz, the
classify route and GET /v1/models with its batch buckets). Every batching file must be the
contract's (`allowed_batch_sizes` = the buckets up to `max_batch_size`), and settings that
would let TF Serving see a batch shape XLA never compiled, or refuse the gateway's largest
batch, are refused before anything is restarted.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from contract.manifest import InputSpec, Manifest, write_manifest
from contract.tfs_config import read_batching_parameters
from tests.loadtest.conftest import ENV, free_port

CliFn = Callable[..., subprocess.CompletedProcess[str]]
LOAD = ["--rate", "20", "--p99-target-ms", "400", "--duration", "0.5", "--warmup", "0",
        "--gen-size", "32x32", "--quiet", "--ready-timeout", "20"]  # fmt: skip


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    """An echo server whose GET /v1/models reports batch buckets 1, 2, 4, 8."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "testdoubles.echo_server", "--port", str(port),
                             "--buckets", "1,2,4,8"], env=ENV, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _tfs_sweep(cli: CliFn, url: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A TF Serving sweep whose restart command copies each batching file into out/applied/."""
    (out / "applied").mkdir(parents=True, exist_ok=True)
    restart = f"cp {{batching_file}} {out / 'applied'}/"
    return cli("sweep", url, *LOAD, "--tfs-restart-cmd", restart, "--tfs-timeout-us", "0",
               "--tfs-threads", "2", "--out", str(out), *args, timeout=120)  # fmt: skip


def _applied(out: Path) -> dict[int, list[int]]:
    """max_batch_size -> allowed_batch_sizes of every file the restart command was given."""
    msgs = [read_batching_parameters(p) for p in sorted((out / "applied").iterdir())]
    return {m.max_batch_size.value: list(m.allowed_batch_sizes) for m in msgs}


def test_tfs_sweep_writes_the_contracts_batching_files(
    gateway: str, cli: CliFn, tmp_path: Path
) -> None:
    proc = _tfs_sweep(cli, gateway, tmp_path, "--tfs-max-batch", "8")
    assert proc.returncode == 0, proc.stderr
    assert _applied(tmp_path) == {8: [1, 2, 4, 8]}
    best = read_batching_parameters(tmp_path / "batching_parameters.txt")
    assert list(best.allowed_batch_sizes) == [1, 2, 4, 8] and best.max_batch_size.value == 8
    assert (best.batch_timeout_micros.value, best.num_batch_threads.value) == (0, 2)


def test_tfs_sweep_defaults_to_the_buckets_that_hold_the_gateways_batch(
    gateway: str, cli: CliFn, tmp_path: Path
) -> None:
    """Gateway max batch 3 is padded to bucket 4: TF Serving may take 4 or 8 at a time."""
    proc = _tfs_sweep(cli, gateway, tmp_path, "--gateway-max-batch", "3")
    assert proc.returncode == 0, proc.stderr
    assert _applied(tmp_path) == {4: [1, 2, 4], 8: [1, 2, 4, 8]}


def test_tfs_sweep_reads_the_buckets_from_the_manifest(
    gateway: str, cli: CliFn, tmp_path: Path
) -> None:
    """--model-dir wins over the gateway's /v1/models (here: buckets up to 16, not 8)."""
    manifest = Manifest(model_name="m", model_version=1, architecture="tiny",
                        input=InputSpec(height=8, width=8), labels=("a", "b"), top_k=1,
                        batch_buckets=(1, 2, 4, 8, 16))  # fmt: skip
    write_manifest(manifest, tmp_path / "models" / "m" / "1")
    proc = _tfs_sweep(cli, gateway, tmp_path / "out", "--model-dir", str(tmp_path / "models" / "m"))
    assert proc.returncode == 0, proc.stderr
    assert _applied(tmp_path / "out") == {16: [1, 2, 4, 8, 16]}


@pytest.mark.parametrize(
    "args, needle",
    [
        # Below the gateway's largest batch (8, the largest bucket, unless told otherwise).
        (["--tfs-max-batch", "4,8"], "--tfs-max-batch must be at least 8"),
        (["--tfs-max-batch", "2", "--gateway-max-batch", "3"], "--tfs-max-batch must be at least 4"),
        # Not a bucket: TF Serving would pad to a shape XLA never compiled.
        (["--tfs-max-batch", "16"], "must be one of the export's batch buckets [1, 2, 4, 8]"),
        (["--tfs-max-batch", "6", "--gateway-max-batch", "2"], "Received: max_batch_size=6"),
    ],
)  # fmt: skip
def test_tfs_settings_that_break_the_buckets_are_refused_up_front(
    gateway: str, cli: CliFn, tmp_path: Path, args: list[str], needle: str
) -> None:
    proc = _tfs_sweep(cli, gateway, tmp_path, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not any((tmp_path / "applied").iterdir())  # TF Serving was never restarted


def test_tfs_sweep_without_buckets_says_where_to_get_them(cli: CliFn, tmp_path: Path) -> None:
    proc = _tfs_sweep(cli, f"http://127.0.0.1:{free_port()}", tmp_path)
    assert proc.returncode == 2 and "start the gateway first or pass --model-dir" in proc.stderr


def test_gateway_max_batch_above_the_largest_bucket_is_refused(cli: CliFn, tmp_path: Path) -> None:
    """The gateway caps its max batch at the largest bucket (64 here), so a point at 128
    would measure 64 under another name. Checked on the first gateway started; it is
    stopped again."""
    port = free_port()
    cmd = f"{sys.executable} -m testdoubles.echo_server --from-env"
    proc = cli("sweep", f"http://127.0.0.1:{port}", *LOAD, "--cmd", cmd, "--max-batch", "8,128",
               "--max-wait-ms", "1", "--out", str(tmp_path), timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "--max-batch must be at most 64" in proc.stderr, proc.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
