"""service.metrics in multiprocess mode: what a scrape keeps of processes that ended.

The aggregation itself (every worker's counters summed by any worker's /metrics) runs with
real worker processes in test_workers.py; prometheus_client picks its storage at import, so
this process (single-process mode) can only check the bookkeeping on files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.metrics import GatewayMetrics, _forget_dead_processes, multiprocess_dir


def test_live_gauges_of_processes_gone_are_dropped_and_counters_kept(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead, alive = int(gone.stdout), os.getpid()
    for pid in (dead, alive):
        for name in (f"gauge_livesum_{pid}.db", f"gauge_liveall_{pid}.db", f"counter_{pid}.db",
                     f"histogram_{pid}.db"):  # fmt: skip
            (tmp_path / name).write_bytes(b"")
    _forget_dead_processes(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([
        f"counter_{dead}.db", f"histogram_{dead}.db",  # a killed worker's requests still count
        f"counter_{alive}.db", f"gauge_liveall_{alive}.db", f"gauge_livesum_{alive}.db",
        f"histogram_{alive}.db",
    ])  # fmt: skip


def test_one_process_keeps_its_values_in_memory() -> None:
    metrics = GatewayMetrics()
    assert multiprocess_dir() is None and metrics.shared_dir is None
    metrics.queue_depth.set(3)
    text = metrics.render().decode()
    assert "gateway_queue_depth 3.0" in text and "gateway_processes 1.0" in text
    metrics.close()  # nothing to drop in memory
