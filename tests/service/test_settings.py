"""Settings whose defaults depend on the backend and the machine (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, available_cpus


@pytest.mark.parametrize(
    ("given", "cores", "workers", "inflight", "threads", "inline"),
    [
        # tfserving: a process per core, the loop decodes small images
        ({"backend": "tfserving"}, 8, 8, 1, 2, 500_000),
        ({"backend": "tfserving"}, 1, 1, 1, 2, 500_000),
        # embedded: one process (TensorFlow and the model once), one call at a time, the pool
        # decodes on every core
        ({"backend": "embedded"}, 8, 1, 1, 8, 0),
        ({"backend": "embedded", "workers": 8}, 8, 8, 1, 2, 500_000),
        # anything set wins
        (
            {
                "backend": "tfserving",
                "workers": 2,
                "max_inflight_batches": 4,
                "decode_workers": 3,
                "inline_decode_max_pixels": 0,
            },
            8,
            2,
            4,
            3,
            0,
        ),
        ({"backend": "tfserving", "workers": 2}, 8, 2, 1, 4, 0),  # fewer processes than cores
    ],
)
def test_defaults_follow_the_backend_and_the_cores(
    monkeypatch: pytest.MonkeyPatch,
    given: dict[str, object],
    cores: int,
    workers: int,
    inflight: int,
    threads: int,
    inline: int,
) -> None:
    monkeypatch.setattr("service.settings.available_cpus", lambda: cores)
    s = Settings(**given)  # type: ignore[arg-type]
    assert s.worker_count() == workers
    assert s.max_inflight_batches == inflight
    assert s.decode_threads() == threads
    assert s.inline_decode_pixels() == inline
    assert s.max_wait_ms == 0.0  # send at once when a backend slot is free


def test_every_new_setting_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"WORKERS": "3", "MAX_INFLIGHT_BATCHES": "5", "METRICS_DIR": "/dev/shm/m",
                        "INLINE_DECODE_MAX_PIXELS": "0"}.items():  # fmt: skip
        monkeypatch.setenv(f"RESNET_SERVING_{name}", value)
    s = Settings()
    assert (s.workers, s.max_inflight_batches, str(s.metrics_dir)) == (3, 5, "/dev/shm/m")
    assert s.inline_decode_pixels() == 0


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", 4),  # no quota: the affinity
        ("200000 100000\n", 2),  # --cpus 2
        ("150000 100000\n", 2),  # 1.5 cores: a second process still has work
        ("50000 100000\n", 1),
        ("800000 100000\n", 4),  # a quota above the cores this process may run on
        (None, 4),  # no cgroup v2 file
        ("garbage", 4),
    ],
)
def test_available_cpus_sees_a_containers_cpu_quota(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpu_max: str | None, expected: int
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert available_cpus(path) == expected
