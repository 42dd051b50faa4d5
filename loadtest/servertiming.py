"""Parse the gateway's `Server-Timing` header into per-stage durations (milliseconds).

Grammar (W3C Server Timing): `metric *( "," metric )`, `metric = name *( ";" param )`,
`param = key "=" value`, value a token or a quoted string. Only `dur` matters here.
Malformed entries are skipped rather than failing the request: the header is diagnostics.
"""

from __future__ import annotations

import math
import re

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on `sep` except inside double quotes (a `desc="a, b"` must stay whole)."""
    if '"' not in text:
        return text.split(sep)  # the common case, without the per-character walk
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            buf.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def parse_server_timing(header: str | None) -> dict[str, float]:
    """Map metric name -> `dur` in ms; metrics without a valid, finite, >= 0 `dur` are left out.

    A repeated name keeps its first value (as the spec says for duplicate params, and so a
    later entry cannot overwrite an earlier stage).
    """
    out: dict[str, float] = {}
    if not header:
        return out
    for metric in _split_outside_quotes(header, ","):
        fields = _split_outside_quotes(metric, ";")
        name = fields[0].strip()
        if not name or not _TOKEN.match(name) or name in out:
            continue
        for param in fields[1:]:
            key, sep, value = param.partition("=")
            if key.strip().lower() != "dur" or not sep:
                continue
            value = value.strip().strip('"')
            try:
                dur = float(value)
            except ValueError:
                break
            if math.isfinite(dur) and dur >= 0:
                out[name] = dur
            break
    return out
