"""What a result was measured on: CPU model, cores, platform, Python and load (no TensorFlow)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, core count and platform of this machine (what a result was measured on)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # 1/5/15-minute load when the report is made: on a shared CPU, how contested it was.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
