"""Acceptance: a 1 s stall shows in open-loop percentiles in proportion to the requests due
during it, while closed loop (what naive tools do) hides it in everything but max."""

from __future__ import annotations

from collections.abc import Callable

from loadtest.engine import run_step
from loadtest.plan import StepSpec
from loadtest.targets import HttpTarget
from testdoubles.echo_server import Behaviour, EchoServer

RATE, DURATION, STALL_AT, STALL = 100.0, 5.0, 2.0, 1.0


def expected_open_loop_percentile(p: float) -> float:
    """Latency (s) at percentile p if the server answers instantly except during the stall.

    A request due at t in [STALL_AT, STALL_AT + STALL) waits until the stall ends: its
    latency is STALL_AT + STALL - t. Those are RATE * STALL of RATE * DURATION requests,
    with latencies spread evenly over (0, STALL]; the rest are ~0.
    """
    n_total = RATE * DURATION
    n_stalled = RATE * STALL
    rank_from_top = n_total * (1 - p / 100.0)  # how many requests are slower than p
    if rank_from_top >= n_stalled:
        return 0.0
    return STALL * (1 - rank_from_top / n_stalled)


async def test_open_loop_shows_the_stall_closed_loop_hides_it(
    make_target: Callable[..., HttpTarget],
) -> None:
    server = EchoServer(Behaviour(stall_at_s=STALL_AT, stall_s=STALL))
    port = await server.start()
    target = make_target(port)
    try:
        opened = await run_step(target, StepSpec(rate=RATE, duration_s=DURATION, timeout_s=5.0))
        server._t0 = None  # the stall happens again, 2 s into the next step
        closed = await run_step(target, StepSpec(concurrency=2, duration_s=DURATION, timeout_s=5.0))
    finally:
        await target.close()
        await server.stop()

    assert opened.ok == RATE * DURATION and opened.errors == 0
    lat = opened.to_json()["latency_ms"]
    # Slack: the stall starts with the server's first request (a few ms after t0), and this
    # shared machine adds tens of ms of scheduling noise; both are far below the effect.
    for p in (90.0, 95.0, 99.0):
        want_ms = expected_open_loop_percentile(p) * 1000
        assert want_ms - 120 <= lat[f"p{p:g}_ms"] <= want_ms + 250, (p, lat)
    assert lat["p90_ms"] >= 300  # "hundreds of ms": 100 of 500 requests were due in the stall
    assert 900 <= lat["max_ms"] <= 1300
    assert lat["p50_ms"] < 100
    # Closed loop: each client has one slow request; the rest are fast.
    cl = closed.to_json()["latency_ms"]
    assert closed.ok > 100
    assert 900 <= cl["max_ms"] <= 1300
    slow_share = 2 / closed.ok  # two clients, one stalled request each
    assert slow_share < 0.01
    assert cl["p99_ms"] < 200, cl  # the stall is invisible below the max
