"""A real S3-compatible server on this machine for the S3 tests and ``bench/bench_storage.py``:
moto's server mode in a subprocess of its own (so a test can stop it), and a TCP proxy in front
of it that refuses connections for a while: an outage as every client sees it, while the
server keeps its (in-memory) buckets. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the S3 server exited ({process.returncode})") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:g} s") \
                    from None
            time.sleep(0.1)


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1:``port`` (a free one by default); ``env`` adds to
    its environment (``INITIAL_NO_AUTH_ACTION_COUNT=0``: every request's credentials are
    checked, and none are known, so all are refused). Stopped by :meth:`stop` (its pid only)."""

    def __init__(self, port: int | None = None, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.port = port or free_port()
        self._log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            _wait_listening(self.port, self.process, 60.0)
        except BaseException:
            self.stop()
            raise

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log is not subprocess.DEVNULL:
            self._log.close()


class OutageProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``. :meth:`pause` closes the listening
    socket and every open connection (clients get "connection refused" until :meth:`resume`
    listens on the same port again)."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server: socket.socket | None = None
        self.resume()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def resume(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
        with self._lock:
            self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def pause(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            sockets, self._open = self._open, set()
        if server is not None:
            server.close()
        for s in sockets:
            _close(s)

    def close(self) -> None:
        self.pause()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:  # closed by pause()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._server is not server:  # paused meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _close(source)
            _close(sink)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def s3_filesystem(endpoint: str, **kwargs):
    """A pyarrow S3 file system on ``endpoint`` (host:port, plain HTTP), credentials from the
    environment."""
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1",
                             **kwargs)


def create_bucket(endpoint: str, bucket: str) -> None:
    s3_filesystem(endpoint, allow_bucket_creation=True).create_dir(bucket)
