"""Circuit breaker state machine, driven by a fake clock (time is the only thing mocked)."""

import pytest

from service.breaker import CircuitBreaker, State
from service.errors import CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_threshold_and_fails_fast() -> None:
    clock = Clock()
    cb = CircuitBreaker(failure_threshold=3, reset_s=2.0, clock=clock)
    for _ in range(2):
        cb.before_call()
        cb.record_failure()
    assert cb.state is State.CLOSED
    cb.before_call()
    cb.record_failure()
    assert cb.state is State.OPEN
    with pytest.raises(CircuitOpen) as exc:
        cb.before_call()
    assert exc.value.status == 503
    assert exc.value.headers() == {"Retry-After": "2"}


def test_success_resets_the_count() -> None:
    cb = CircuitBreaker(failure_threshold=2, reset_s=1.0, clock=Clock())
    cb.record_failure()
    cb.record_success()
    cb.record_failure()
    assert cb.state is State.CLOSED


@pytest.mark.parametrize(("probe_ok", "final"), [(True, State.CLOSED), (False, State.OPEN)])
def test_half_open_lets_one_probe_through(probe_ok: bool, final: State) -> None:
    clock = Clock()
    cb = CircuitBreaker(failure_threshold=1, reset_s=2.0, clock=clock)
    cb.record_failure()
    clock.t += 2.0
    assert cb.state is State.HALF_OPEN
    cb.before_call()  # the probe
    with pytest.raises(CircuitOpen):
        cb.before_call()  # a second caller while the probe is out
    if probe_ok:
        cb.record_success()
    else:
        cb.record_failure()
    assert cb.state is final


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"reset_s": 0.0}, {"reset_s": -1.0}], ids=str
)
def test_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Received"):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_the_settings_defaults() -> None:
    """A breaker built without arguments (TFServingBackend's default) behaves as configured."""
    from service.settings import Settings

    cb, s = CircuitBreaker(), Settings.model_fields
    assert cb.failure_threshold == s["breaker_failure_threshold"].default
    assert cb.reset_s == s["breaker_reset_s"].default


@pytest.mark.parametrize(
    ("elapsed_s", "retry_after", "next_probe"), [(0.0, 2, "2.0"), (0.5, 2, "1.5"), (1.6, 1, "0.4")]
)
def test_fail_fast_says_when_the_next_probe_goes(
    elapsed_s: float, retry_after: int, next_probe: str
) -> None:
    """Retry-After is the time left until the probe, rounded up, at least 1 s."""
    clock = Clock()
    cb = CircuitBreaker(failure_threshold=2, reset_s=2.0, clock=clock)
    cb.record_failure()
    cb.record_failure()
    clock.t += elapsed_s
    with pytest.raises(CircuitOpen) as info:
        cb.fail_fast()
    assert info.value.retry_after_s == retry_after
    assert str(info.value) == (
        "model server failed 2 times in a row; failing fast until a probe succeeds "
        f"(next probe in {next_probe}s)"
    )


def test_fail_fast_never_claims_the_half_open_probe() -> None:
    """Routes and the batcher call fail_fast before queueing: closed or half-open, it lets them
    through without taking the one probe the next backend call will make."""
    clock = Clock()
    cb = CircuitBreaker(failure_threshold=1, reset_s=2.0, clock=clock)
    cb.fail_fast()  # closed: nothing raised
    cb.record_failure()
    with pytest.raises(CircuitOpen):
        cb.fail_fast()
    clock.t += 2.0
    cb.fail_fast()  # half-open: queue the work...
    cb.fail_fast()
    cb.before_call()  # ...the probe is still free for the backend call
    assert cb.state is State.HALF_OPEN


@pytest.mark.parametrize("outcome", ["cancelled", "timed_out"])
def test_a_probe_that_ends_without_an_answer_frees_the_next_probe(outcome: str) -> None:
    """A cancelled or timed-out probe says nothing about the server; if it kept the probe slot,
    the breaker would fail fast for ever (every later caller sees a probe 'in flight')."""
    clock = Clock()
    cb = CircuitBreaker(failure_threshold=1, reset_s=2.0, clock=clock)
    cb.record_failure()
    clock.t += 2.0
    cb.before_call()  # the probe goes out...
    cb.record_neutral()  # ...and is cancelled, or its deadline (ours) passes
    assert cb.state is State.HALF_OPEN  # still unknown: neither closed nor re-opened
    cb.before_call()  # so the next caller may probe
    cb.record_success()
    assert cb.state is State.CLOSED
