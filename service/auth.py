"""Optional API keys. Keys are compared in constant time and never logged: callers get a
short, stable key id (a hash prefix) to log and to rate-limit by instead.
"""

from __future__ import annotations

import hashlib
import hmac

from service.errors import Unauthorized

API_KEY_HEADER = "X-API-Key"


def key_id(key: str) -> str:
    """A non-reversible id for logs and rate limits: 'key-' + 12 hex chars of sha256."""
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class ApiKeys:
    """Checks a presented key against the configured set (empty set: auth is off)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode("utf-8") for k in keys if k)
        self._ids = tuple(key_id(k) for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, presented: str | None) -> str | None:
        """The key id of a valid key; None when auth is off; Unauthorized otherwise."""
        if not self._keys:
            return None
        if not presented:
            raise Unauthorized(f"missing API key: send it in the {API_KEY_HEADER} header")
        given = presented.encode("utf-8")
        match = -1
        # Compare against every key, always, so timing does not reveal which key nearly matched.
        for i, key in enumerate(self._keys):
            if hmac.compare_digest(given, key):
                match = i
        if match < 0:
            raise Unauthorized("invalid API key")
        return self._ids[match]


def bearer_or_header(authorization: str | None, x_api_key: str | None) -> str | None:
    """Accept `X-API-Key: k` or `Authorization: Bearer k`."""
    if x_api_key:
        return x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return None
