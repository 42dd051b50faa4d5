"""Token-bucket rate limits and API keys."""

import pytest

from service.auth import ApiKeys, bearer_or_header, key_id
from service.errors import RateLimited, Unauthorized
from service.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_refill() -> None:
    clock = Clock()
    rl = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    for _ in range(3):
        rl.check("a")
    with pytest.raises(RateLimited) as exc:
        rl.check("a")
    assert exc.value.status == 429
    assert exc.value.headers()["Retry-After"] == "1"
    rl.check("b")  # other clients are unaffected
    clock.t += 0.5  # one token back
    rl.check("a")
    with pytest.raises(RateLimited):
        rl.check("a")


def test_client_table_is_bounded() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1, max_clients=100, clock=Clock())
    for i in range(1000):
        rl.check(f"client-{i}")
    assert len(rl) == 100


@pytest.mark.parametrize(
    ("presented", "ok"), [("k1", True), ("k2", True), ("k3", False), ("", False), (None, False)]
)
def test_api_keys(presented: str | None, ok: bool) -> None:
    keys = ApiKeys(("k1", "k2"))
    if ok:
        assert keys.authenticate(presented) == key_id(presented or "")
    else:
        with pytest.raises(Unauthorized) as exc:
            keys.authenticate(presented)
        assert "k1" not in str(exc.value) and "k2" not in str(exc.value)


def test_auth_off_when_no_keys() -> None:
    assert ApiKeys(()).authenticate(None) is None


@pytest.mark.parametrize(
    ("authorization", "header", "expected"),
    [
        (None, "abc", "abc"),
        ("Bearer xyz", None, "xyz"),
        ("Basic xyz", None, None),
        (None, None, None),
    ],
)
def test_key_sources(authorization: str | None, header: str | None, expected: str | None) -> None:
    assert bearer_or_header(authorization, header) == expected


def test_key_id_hides_the_key() -> None:
    assert "secret" not in key_id("secret") and key_id("secret") == key_id("secret")
