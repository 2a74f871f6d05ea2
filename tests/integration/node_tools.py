"""Node.js helpers that the tests run beside Envoy (oidc-provider, the MCP SDK, a browser
driver): the node binary, checked together with the npm packages a test needs, a server's start
(its ready line) and its stop."""
from __future__ import annotations

import json
import selectors
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]


def node_binary(what_runs: str, packages: Sequence[str]) -> str:
    """Fails (not skips) without Node.js or the npm packages: `what_runs` says what needs them."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node not found: {what_runs}", pytrace=False)
    for package in packages:
        if not (REPO / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"npm package {package} not installed: run `make node-deps` (npm ci)", pytrace=False)
    return node


def read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """One line of `proc`'s stdout, waited for at most `timeout_s`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    line = b""
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError(f"no line from {proc.args} within {timeout_s}s (so far {line!r})")
            chunk = proc.stdout.readline()
            if not chunk:
                raise RuntimeError(f"{proc.args} exited ({proc.poll()}) before a line (so far {line!r})")
            line += chunk
        return line
    finally:
        selector.close()


def start_server(node: str, script: Path, args: Sequence[str], log_path: Path,
                 timeout_s: float) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`node script args` from the repository (stderr to `log_path`; it ends when its stdin
    closes, as the servers beside the tests do) and its ready line, waited for at most
    `timeout_s`; a server that does not start is killed and its log raised."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([node, str(script), *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO)
    try:
        ready = json.loads(read_line(proc, timeout_s))
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"{script.name} did not start:\n{log_path.read_text(errors='replace')}")
    assert ready["ready"] is True, ready
    return proc, ready


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 5) -> None:
    """Ends `proc`: SIGTERM, then SIGKILL when it has not exited within `timeout_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
