"""benchmarks.gateway_ceiling's CPU accounting: the gateway, the double and the rest apart."""

from __future__ import annotations

import pytest

from benchmarks.gateway_ceiling import Step, merge_halves


def step(*, cpu_s: float, double_s: float, machine_s: float, images: int = 1000) -> Step:
    return Step(rate=500, images_s=500, p50_ms=5, p99_ms=20, errors=0, queue_p50_ms=0.1,
                cpu_s=cpu_s, images=images, machine_cpu_s=machine_s, window_s=2.0,
                double_cpu_s=double_s)  # fmt: skip


def test_others_are_the_machine_less_the_gateway_and_the_double() -> None:
    s = step(cpu_s=3.0, double_s=0.5, machine_s=3.8)
    assert s.cpu_ms_per_image == pytest.approx(3.0)
    assert s.double_ms_per_image == pytest.approx(0.5)
    assert s.others_ms_per_image == pytest.approx(0.3)
    assert s.machine_busy(2) == pytest.approx(0.95)


def test_two_halves_add_their_images_and_share_one_window_of_cpu() -> None:
    """Each half read the same samplers over the same window: CPU is averaged, not summed."""
    a = step(cpu_s=3.0, double_s=0.6, machine_s=4.0, images=500)
    b = step(cpu_s=3.2, double_s=0.4, machine_s=3.8, images=520)
    m = merge_halves(a, b)
    assert m.images == 1020 and m.rate == 1000
    assert m.cpu_s == pytest.approx(3.1)
    assert m.double_cpu_s == pytest.approx(0.5)
    assert m.machine_cpu_s == pytest.approx(3.9)
