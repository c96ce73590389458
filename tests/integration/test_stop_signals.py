"""Every command that starts child processes stops them on SIGTERM, SIGHUP and SIGINT.

Proven by process id: the children are listed (psutil) while they run, the parent gets the
signal, and afterwards none of those processes is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from streams.broker.embedded import EmbeddedBroker, free_port, wait_for_port
from streams.harness import GuardProcess, start_guard

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Hang guards only (never timing assertions): generous for a busy two-core machine.
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 120.0


def _children_gone(parent: subprocess.Popen[bytes], children: list[psutil.Process]) -> list[psutil.Process]:
    """Wait for the parent, then for its children; the children still alive."""
    parent.wait(timeout=STOP_TIMEOUT_S)
    _gone, alive = psutil.wait_procs(children, timeout=STOP_TIMEOUT_S)
    return alive


def _command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone meanwhile
        return ""


def _kill_all(parent: subprocess.Popen[bytes], children: list[psutil.Process]) -> None:
    for process in children:
        if process.is_running():
            process.kill()
    if parent.poll() is None:
        parent.kill()
        parent.wait()


def _wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {path.read_text(errors='replace')}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {START_TIMEOUT_S:.0f} s: {path.read_text(errors='replace')}")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_the_demo_stops_its_broker_and_guard(stop: signal.Signals, tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "streams", "demo", "--events", "5000", "--rate", "50"],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    children: list[psutil.Process] = []
    try:
        _wait_for_text(out, "guard ready", demo)
        children = psutil.Process(demo.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in children)
        assert "broker" in names and "streams run" in names, names  # the broker and the guard
        demo.send_signal(stop)
        assert _children_gone(demo, children) == []
        assert demo.returncode == 128 + stop
        assert "its broker and guard are stopped" in out.read_text(errors="replace")
    finally:
        _kill_all(demo, children)


def test_the_demo_stopped_while_its_guard_starts_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM as soon as the guard process exists, before it is ready."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "streams", "demo", "--events", "5000", "--rate", "50"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and demo.poll() is None:
            children = psutil.Process(demo.pid).children(recursive=True)
            if any("streams run" in _command_line(p) for p in children):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the demo never started its guard")
        demo.send_signal(signal.SIGTERM)
        assert _children_gone(demo, children) == []
        assert demo.returncode == 128 + signal.SIGTERM
    finally:
        _kill_all(demo, children)


@pytest.mark.parametrize(
    "stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"]
)
def test_the_broker_command_stops_its_broker(stop: signal.Signals) -> None:
    port = free_port()
    command = subprocess.Popen(
        [sys.executable, "-m", "streams", "broker", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[psutil.Process] = []
    try:
        wait_for_port(port, timeout_s=START_TIMEOUT_S)
        children = psutil.Process(command.pid).children(recursive=True)
        assert children, "the broker runs as a child process"
        command.send_signal(stop)
        assert _children_gone(command, children) == []
        assert command.returncode == 0
    finally:
        _kill_all(command, children)


def test_run_with_workers_stops_every_worker_on_sighup(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Settings given as flags reach every worker, but for the ones set per worker."""
    name = f"sighup-{uuid.uuid4().hex[:8]}"
    port = free_port()
    flags = [
        "--workers", "2", "--dev", "--create-topics", "--bootstrap-servers", broker.bootstrap,
        "--input-topics", f"{name}.events", "--group-id", name, "--transactional-id", name,
        "--rules", str(ROOT / "rules"), "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
        "--session-timeout-ms", "6000", "--batch-size", "50",
    ]  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")}
    log = tmp_path / "guard.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams", "run", *flags],
            env=clean,
            cwd=tmp_path,
            stdout=sink,
            stderr=sink,
        )
    guard = GuardProcess(process, port, log)
    children: list[psutil.Process] = []
    try:
        guard.wait_ready(timeout_s=START_TIMEOUT_S)
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) == 2, [p.cmdline() for p in children]
        for child in children:
            line = child.cmdline()
            assert "--batch-size" in line and "--group-id" in line, line
            assert not {"--metrics-port", "--transactional-id", "--workers", "--create-topics"} & set(line), (
                line
            )
        process.send_signal(signal.SIGHUP)
        assert _children_gone(process, children) == []
        assert process.returncode == 0, guard.log()
    finally:
        _kill_all(process, children)


def test_a_worker_stops_cleanly_on_sighup(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """`run` (one process) commits its open batch and exits 0 on SIGHUP, as on SIGTERM."""
    name = f"hup-one-{uuid.uuid4().hex[:8]}"
    env = {
        "PARTNER_GUARD_GROUP_ID": name,
        "PARTNER_GUARD_TRANSACTIONAL_ID": name,
        "PARTNER_GUARD_RULES_DIR": str(ROOT / "rules"),
    }
    guard = start_guard(broker.bootstrap, f"{name}.events", tmp_path / "guard.log", env, dev=True)
    try:
        guard.wait_ready(timeout_s=START_TIMEOUT_S)
        os.kill(guard.process.pid, signal.SIGHUP)
        assert guard.process.wait(timeout=STOP_TIMEOUT_S) == 0, guard.log()
        assert "signal SIGHUP received" in guard.log()
    finally:
        guard.stop()
