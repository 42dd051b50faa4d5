"""The reverse proxy in front of the gateway: its limits are the gateway's, and it enforces them.

`deploy/proxy/gateway.conf.template` is what compose runs in nginx. Each of its limits is
tied to the gateway setting it mirrors, and the file runs in a real nginx (Debian's package,
installed by .ci/run) in front of a real uvicorn to show the same abuse is refused there.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from service.settings import Settings
from tests.deploy.deploy_support import missing_tool

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "proxy" / "gateway.conf.template"
DEFAULTS = Settings()


def directive(name: str) -> list[str]:
    """The arguments of the first `name ...;` directive in the template."""
    match = re.search(rf"^\s*{name}\s+([^;]+);", TEMPLATE.read_text(), re.M)
    assert match, f"{name} is not set in {TEMPLATE.name}"
    return match.group(1).split()


def size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(text[:-1]) * units[text[-1].lower()] if text[-1].isalpha() else int(text)


def seconds(text: str) -> float:
    return float(text.removesuffix("s"))


def test_the_proxy_limits_are_the_gateways() -> None:
    assert size(directive("client_max_body_size")[0]) == DEFAULTS.max_upload_bytes
    count, each = directive("large_client_header_buffers")
    assert int(count) * size(each) == DEFAULTS.max_header_bytes
    assert seconds(directive("client_header_timeout")[0]) == DEFAULTS.header_timeout_s
    assert seconds(directive("client_body_timeout")[0]) == DEFAULTS.body_timeout_s
    assert seconds(directive("proxy_read_timeout")[0]) > DEFAULTS.request_timeout_s
    assert directive("proxy_request_buffering") == ["on"]
    assert directive("proxy_set_header X-Forwarded-For") == ["$remote_addr"]


async def echo_client(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Answers with the client address uvicorn settled on (after X-Forwarded-For)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = json.dumps({"client": scope["client"][0]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def upstream() -> Iterator[int]:
    """uvicorn trusting forwarded headers from 127.0.0.1 only, as the gateway would be set up."""
    port = free_port()
    config = uvicorn.Config(echo_client, port=port, log_level="warning", lifespan="off",
                            proxy_headers=True, forwarded_allow_ips="127.0.0.1")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < end
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def nginx(tmp_path: Path, gateway_port: int) -> Iterator[int]:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        missing_tool("nginx", "apt-get install nginx-light (.ci/run does)")
    port = free_port()
    # As the nginx image's entrypoint does: envsubst of the variables set, nginx's own kept.
    site = (
        TEMPLATE.read_text()
        .replace("${GATEWAY_UPSTREAM}", f"127.0.0.1:{gateway_port}")
        .replace("${PROXY_PORT}", f"127.0.0.1:{port}")
    )
    (tmp_path / "logs").mkdir()
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        "worker_processes 1;\nerror_log logs/error.log warn;\npid logs/nginx.pid;\n"
        "events { worker_connections 256; }\n"
        "http { access_log off; client_body_temp_path logs/body; proxy_temp_path logs/proxy;\n"
        f"  include {tmp_path / 'site.conf'}; }}\n"
    )
    proc = subprocess.Popen([binary, "-p", str(tmp_path), "-c", "nginx.conf", "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        end = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            assert time.monotonic() < end, "nginx did not listen"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def http(port: int, request: bytes, timeout_s: float = 10) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        with contextlib.suppress(OSError):
            s.sendall(request)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_nginx_refuses_what_the_gateway_refuses_and_forwards_the_real_client(
    tmp_path: Path,
) -> None:
    with upstream() as gateway_port, nginx(tmp_path, gateway_port) as port:
        status, body = http(port, b"GET / HTTP/1.0\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\n"
                                  b"Connection: close\r\n\r\n")  # fmt: skip
        assert status == 200 and json.loads(body)["client"] == "127.0.0.1"  # not the forgery
        big_head = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-A: " + b"a" * 40_000 + b"\r\n\r\n"
        assert http(port, big_head)[0] == 400  # nginx: "Request Header Or Cookie Too Large"
        admin = b"PUT /admin/models/demo/canary HTTP/1.0\r\nHost: t\r\nConnection: close\r\n\r\n"
        assert http(port, admin)[0] == 404  # the admin API stays inside the deployment
        big_body = (f"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {21 * 1024 * 1024}\r\n"
                    "Connection: close\r\n\r\n").encode()  # fmt: skip
        assert http(port, big_body)[0] == 413
