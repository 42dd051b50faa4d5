#!/usr/bin/env python3
"""Container health probe for the gateway: exit 0 only when GET http://127.0.0.1:PORT/PATH is 200.

    gateway-healthcheck [/readyz|/livez]

The slim image has no curl; this uses only the standard library. PORT is the gateway's own
RESNET_SERVING_PORT (default 8000), so the probe follows the settings the server started with.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/readyz"
    port = os.environ.get("RESNET_SERVING_PORT", "8000")
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3.0) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
