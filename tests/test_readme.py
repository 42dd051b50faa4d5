"""Every shell command of the README's quick start, gateway and load-test sections, run as written.

A newcomer copies these commands; this runs them, in order, against a demo model trained
fresh by `resnet-serving demo` (what `make up` trains), and fails when one stops working. What
is adapted, and only that: the HTTP port (8000 -> a free one, through `RESNET_SERVING_PORT`
for the servers, in the URLs for the clients) and the gRPC port 8500 likewise, so the test
never collides with a gateway you are running; the load tests' `--duration`/`--warmup` are
cut to a second each (their behaviour, not their length, is what is checked); `make test`
is not run from inside the test suite; `source .venv/bin/activate` is done by putting the
virtual environment's `bin` first on PATH. A line ending in `&` and every server command
(`make up`, `resnet-serving serve|standin`) runs in the background until its section ends;
the gateway must then stop cleanly on SIGTERM (what Ctrl-C does), exit status 0.
Docker and GPU sections are not run here (no Docker engine, no GPU).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("Quick start", "The gateway", "Load-test the quick-start service")
SERVERS = re.compile(r"^(make up\b|resnet-serving (serve|standin)\b)")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readme_sections() -> dict[str, list[list[str]]]:
    """Section title -> its bash blocks -> each block's commands (continuations joined)."""
    out: dict[str, list[list[str]]] = {}
    title = ""
    block: list[str] | None = None
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if block is None and re.match(r"^#{2,3} ", line):
            title = line.lstrip("#").strip()
        elif line.strip() == "```bash":
            block = []
        elif line.strip() == "```" and block is not None:
            out.setdefault(title, []).append(_commands(block))
            block = None
        elif block is not None:
            block.append(line)
    return out


def _commands(lines: list[str]) -> list[str]:
    commands, current = [], ""
    for line in lines:
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        text = _without_comment(current).strip()
        current = ""
        if text:
            commands.append(text)
    return commands


def _without_comment(line: str) -> str:
    """`line` up to a `#` that starts a shell comment (outside quotes, after a blank)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote and line[i - 1] != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


@dataclass
class Session:
    """The newcomer's terminal: a working folder, ports, and what runs in the background."""

    cwd: Path
    env: dict[str, str]
    http_port: int
    grpc_port: int
    background: list[tuple[str, subprocess.Popen[str]]] = field(default_factory=list)

    def adapt(self, command: str) -> str:
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{self.http_port}")
        command = command.replace("localhost:8000", f"127.0.0.1:{self.http_port}")
        command = re.sub(r"(?<=[:= ])8500\b", str(self.grpc_port), command)
        command = re.sub(r"--duration \d+(\.\d+)?", "--duration 1", command)
        return re.sub(r"--warmup \d+(\.\d+)?", "--warmup 1", command)

    def run(self, command: str) -> str:
        if command == "make test" or command.startswith("source .venv/bin/activate"):
            return ""
        command = self.adapt(command)
        if command.endswith("&") or SERVERS.match(command):
            self.start(command.rstrip("& "))
            return ""
        cwd = ROOT if command.startswith("make ") else self.cwd
        proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=self.env, text=True,
                              capture_output=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc.stdout

    def start(self, command: str) -> None:
        cwd = ROOT if command.startswith("make ") else self.cwd
        # A file, not a pipe: a server logging every request would fill a pipe nobody reads.
        log = (self.cwd / f"background-{len(self.background)}.log").open("w")
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=self.env,
                                text=True, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.background.append((command, proc))
        if "standin" in command:
            self._wait(proc, command, lambda: _listening(self.grpc_port))
        else:
            self._wait(proc, command, lambda: _ready(self.http_port))

    def _wait(self, proc: subprocess.Popen[str], command: str, ok: object) -> None:
        end = time.monotonic() + 240
        while not ok():  # type: ignore[operator]
            if proc.poll() is not None:
                raise AssertionError(f"`{command}` exited {proc.returncode}:\n{_tail(proc)}")
            assert time.monotonic() < end, f"`{command}` was not ready within 240 s"
            time.sleep(0.2)

    def stop_all(self) -> None:
        """Ctrl-C for the gateway (it drains and exits 0, and so does `make up` around it);
        SIGTERM for the stand-in."""
        while self.background:
            command, proc = self.background.pop()
            # `make up` runs the gateway as its child: the gateway gets the Ctrl-C, make
            # returns its exit status.
            targets = _children(proc.pid) if command.startswith("make ") else [proc.pid]
            for pid in targets:
                os.kill(pid, signal.SIGTERM if "standin" in command else signal.SIGINT)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"`{command}` did not stop within 60 s") from None
            assert code == 0, f"`{command}` exited {code} when stopped:\n{_tail(proc)}"


def _tail(proc: subprocess.Popen[str]) -> str:
    return Path(proc.log_path).read_text()[-3000:]  # type: ignore[attr-defined]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()] or [pid]


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo model trained fresh, exactly as `make up` trains it (~2.5 min on 2 cores)."""
    base = tmp_path_factory.mktemp("readme-models")
    proc = subprocess.run([str(Path(sys.executable).parent / "resnet-serving"), "demo",
                           "--model-base", str(base)], capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base


@pytest.fixture
def session(demo_model: Path, tmp_path: Path) -> Session:
    work = tmp_path / "work"
    work.mkdir()
    (work / "models").symlink_to(demo_model)
    (work / "examples").symlink_to(ROOT / "examples")
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MODELS": str(demo_model),  # `make up` serves the fresh model (the Makefile's MODELS)
        "RESNET_SERVING_PORT": str(http_port),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    s = Session(work, env, http_port, grpc_port)
    yield s  # type: ignore[misc]
    for _, proc in s.background:
        os.killpg(proc.pid, signal.SIGKILL)


def classified(stdout: str) -> list[str]:
    """The first label of each prediction in a classify answer (fails on an error body)."""
    body = json.loads(stdout)
    assert "error" not in body, body
    return [p["top_k"][0]["label"] for p in body["predictions"]]


def test_the_readme_sections_are_where_the_test_looks() -> None:
    sections = readme_sections()
    assert all(title in sections for title in SECTIONS), sorted(sections)
    assert sections["Quick start"][0] == ["make up", "make test"]


def test_quick_start(session: Session) -> None:
    setup, clients = readme_sections()["Quick start"][:2]
    for command in setup:
        session.run(command)
    outputs = [session.run(c) for c in clients]
    assert classified(outputs[0]) == ["star"]  # curl -F image=@examples/star.jpg
    assert json.loads(outputs[1])["models"][0]["name"] == "demo"
    session.stop_all()


def test_the_gateway_section(session: Session) -> None:
    blocks = readme_sections()["The gateway"]
    outputs = [session.run(c) for c in blocks[0]]
    answers = [classified(o) for o in outputs if o]
    assert answers == [["ring"], ["star", "circle"], ["star"], ["star"]]
    session.stop_all()
    for command in blocks[1]:  # the stand-in, then a gateway on the tfserving backend
        session.run(command)
    reply = httpx.post(
        f"http://127.0.0.1:{session.http_port}/v1/classify",
        timeout=30,
        files={"image": ("star.jpg", (ROOT / "examples/star.jpg").read_bytes())},
    )
    assert classified(reply.text) == ["star"]
    session.stop_all()


def test_the_load_test_walkthrough(session: Session) -> None:
    (commands,) = readme_sections()["Load-test the quick-start service"][:1]
    for command in commands:
        session.run(command)
    session.stop_all()
    for out in ("lt-steps", "lt-max", "lt-steps-b"):
        result = json.loads((session.cwd / out / "result.json").read_text())
        assert result["steps"], out
        assert (session.cwd / out / "report.html").is_file()
    assert shutil.which("bash")
