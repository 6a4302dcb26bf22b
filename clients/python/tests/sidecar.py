"""Starts the real llmusage binary for the tests, like internal/sidecartest.

The binary is LLMUSAGE_TEST_BINARY (cmd/llmusage's TestPythonClient sets
it to the one it built), else one built here with `go build`. A sidecar
listens on ports the kernel picks, read from its "llmusage serving" log
line; a restart reuses them, so that a client keeps its URL.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Tuple

TESTS = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.dirname(TESTS)  # clients/python
REPO = os.path.dirname(os.path.dirname(PACKAGE_DIR))

_built: Dict[str, str] = {}


def binary() -> str:
    """The llmusage binary: LLMUSAGE_TEST_BINARY, else built once here."""
    path = os.environ.get("LLMUSAGE_TEST_BINARY")
    if path:
        return path
    if "path" not in _built:
        d = tempfile.mkdtemp(prefix="llmusage-pytest")
        atexit.register(shutil.rmtree, d, True)
        out = os.path.join(d, "llmusage")
        subprocess.run(["go", "build", "-o", out, "./cmd/llmusage"], cwd=REPO, check=True)
        _built["path"] = out
    return _built["path"]


class Sidecar:
    """One `llmusage serve` process with its own data directory."""

    def __init__(self, limits: str = "", flags: Tuple[str, ...] = (), unix: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix="llmusage-sidecar")
        self.args = [binary(), "serve", "--log-format", "json", "--data-dir", os.path.join(self.dir, "data"),
                     "--flush-interval", "50ms"] + list(flags)
        if limits:
            path = os.path.join(self.dir, "limits.yaml")
            with open(path, "w") as f:
                f.write(limits)
            self.args += ["--limits-file", path]
        self.api = "unix:" + os.path.join(self.dir, "api.sock") if unix else "127.0.0.1:0"
        self.metrics = "127.0.0.1:0"
        self.proc: Optional[subprocess.Popen] = None
        self._log: List[str] = []
        self._procs: List[subprocess.Popen] = []
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout: float = 60) -> "Sidecar":
        """Starts (or restarts, on the same addresses) and waits for /readyz."""
        args = self.args + ["--listen-address", self.api, "--metrics-address", self.metrics]
        start = len(self._log)
        self.proc = subprocess.Popen(args, cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._procs.append(self.proc)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the sidecar exited with %s:\n%s" % (self.proc.returncode, self.log()))
            addrs = self._serving(start)
            if addrs and self._ready(addrs[1]):
                api, self.metrics = addrs
                self.api = api if self.api.startswith("127.") else "unix:" + api
                return self
            if time.monotonic() > deadline:
                raise RuntimeError("the sidecar was not ready within %ss:\n%s" % (timeout, self.log()))
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, and wait for the exit (the spool is written first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(60)
        for proc in self._procs:
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self.dir, True)

    def log(self) -> str:
        with self._lock:
            return "".join(self._log)

    @property
    def url(self) -> str:
        """LLMUSAGE_URL for this sidecar."""
        return self.api if self.api.startswith("unix:") else "http://" + self.api

    # -- requests independent of the client under test ------------------------

    def get(self, path: str, token: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
        return self._request("GET", path, None, token)

    def post(self, path: str, body: Any, token: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
        return self._request("POST", path, json.dumps(body).encode(), token)

    def metrics_text(self) -> str:
        """The metrics listener's /metrics, in the Prometheus text format."""
        host, port = self.metrics.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            return resp.read().decode()
        finally:
            conn.close()

    def logs(self, user_id: str) -> List[Dict[str, Any]]:
        """Every stored record of user_id, newest first."""
        rows: List[Dict[str, Any]] = []
        before = ""
        while True:
            q = {"user_id": user_id, "limit": 1000}
            if before:
                q["before"] = before
            status, page = self.get("/api/llm/usage/logs?" + urllib.parse.urlencode(q))
            assert status == 200, page
            rows += page["logs"]
            before = page.get("next_cursor") or ""
            if not before:
                return rows

    def stored_once_marked(self, user_id: str, sentinel_model: str, timeout: float = 30) -> List[Dict[str, Any]]:
        """The user's stored rows once the row of sentinel_model, posted
        after the others, is stored: the writer keeps the order of intake,
        so a duplicate of an earlier record would be stored by then too."""
        status, answer = self.post("/v1/calls", {"user_id": user_id, "model": sentinel_model})
        assert status == 202, answer
        rows: List[Dict[str, Any]] = []

        def stored() -> bool:
            rows[:] = self.logs(user_id)
            return any(r["model"] == sentinel_model for r in rows)

        wait_for(stored, timeout, "the sentinel record of %s was not stored" % user_id)
        return [r for r in rows if r["model"] != sentinel_model]

    # -- internals --------------------------------------------------------------

    def _request(self, method: str, path: str, body: Optional[bytes], token: Optional[str]) -> Tuple[int, Dict[str, Any]]:
        if self.api.startswith("unix:"):
            conn: http.client.HTTPConnection = _Unix(self.api[len("unix:"):])
        else:
            host, port = self.api.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self._log.append(line)

    def _serving(self, start: int) -> Optional[Tuple[str, str]]:
        with self._lock:
            lines = self._log[start:]
        for line in lines:
            if "llmusage serving" in line and line.startswith("{"):
                entry = json.loads(line)
                return entry["api"], entry["metrics"]
        return None

    @staticmethod
    def _ready(metrics: str) -> bool:
        host, port = metrics.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def wait_for(cond: Callable[[], bool], timeout: float, message: str) -> None:
    """Polls cond until it holds; fails with message after timeout."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("%s (waited %ss)" % (message, timeout))
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def free_port() -> int:
    """A port nothing listens on (a moment ago): an unreachable sidecar."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
