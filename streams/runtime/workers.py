"""`partner-guard run --workers N`: N guard processes on one host, one metrics endpoint for all.

One Python process decides on one core (the GIL), so a host with several cores runs several
workers. Each worker is a complete `partner-guard run` in the same consumer group, with its
own transactional id (`<transactional_id>-w<i>`, or the default group-host-pid, unique per
process), its own state tables (with `state_store: rocksdb`, in its own directory
`<state_dir>/worker-<i>`: a store is written by one process), and its own share of the input
partitions; the broker
balances partitions between them exactly as between instances on different hosts, so every
promise holds per worker. The supervisor:

- creates the topics once (`--create-topics`) before starting the workers;
- in a `--dev` run, makes the ephemeral partner and payload keys once and hands the same
  ones to every worker (pseudonyms must not depend on which worker decided);
- serves `/metrics` on the configured port: every worker's series, each labelled
  `worker="<i>"` (sum over `worker` in queries); `/readyz` when every worker is ready,
  `/healthz` when every worker is alive and healthy;
- on SIGTERM, SIGINT or SIGHUP stops every worker (SIGTERM to each) and exits with the
  worst exit code; when a worker dies on its own, it stops the others and exits non-zero, so the supervisor's
  supervisor (systemd, Kubernetes) restarts the set.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from streams.broker.embedded import free_port
from streams.runtime.config import ENV_PREFIX, Settings
from streams.runtime.formats.payload import KEYS_ENV
from streams.runtime.kafka.topics import ensure_topics, guard_topic_layout
from streams.runtime.ops.metrics import serve_http
from streams.runtime.ops.secrets import env_name

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_S = 2.0
# How often the supervisor checks that every worker still runs.
WATCH_INTERVAL_S = 0.5
STOP_TIMEOUT_S = 30.0


@dataclass
class Worker:
    """One child `partner-guard run` process and its private metrics port."""

    index: int
    process: subprocess.Popen[bytes]
    port: int

    def get(self, path: str) -> tuple[int, str]:
        """Status and body of one of the worker's HTTP endpoints (0 when unreachable)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=SCRAPE_TIMEOUT_S) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), ""
        except OSError:
            return 0, ""


class WorkersCollector:
    """Every worker's metrics, each series labelled with its worker index."""

    def __init__(self, workers: Callable[[], list[Worker]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        """Scrape the workers and yield their families merged by name."""
        families: dict[str, Metric] = {}
        for worker in self._workers():
            status, text = worker.get("/metrics")
            if status != 200:
                continue
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                merged.samples.extend(
                    Sample(
                        s.name, {**s.labels, "worker": str(worker.index)}, s.value, s.timestamp, s.exemplar
                    )
                    for s in family.samples
                )
        yield from families.values()


# Settings the supervisor sets for each worker itself (through the worker's environment, or
# by acting once for all): never handed on to a worker as command-line flags, which would win.
SUPERVISOR_SETTINGS = (
    "workers",
    "create_topics",
    "metrics_host",
    "metrics_port",
    "transactional_id",
    "state_dir",  # worker i's is <state_dir>/worker-<i>
)


def worker_environment(settings: Settings, index: int) -> dict[str, str]:
    """The environment of worker `index`: its own transactional id, loopback metrics port, keys,
    and state directory."""
    env = {
        ENV_PREFIX + "METRICS_HOST": "127.0.0.1",
        ENV_PREFIX + "METRICS_PORT": str(free_port()),
        ENV_PREFIX + "WORKERS": "1",
        ENV_PREFIX + "STATE_DIR": str(worker_state_dir(settings, index)),
    }
    if settings.transactional_id:
        env[ENV_PREFIX + "TRANSACTIONAL_ID"] = f"{settings.transactional_id}-w{index}"
    return env


def worker_state_dir(settings: Settings, index: int) -> Path:
    """Worker `index`'s own state directory: two processes never share a disk store."""
    return Path(settings.state_dir) / f"worker-{index}"


def shared_dev_secrets(settings: Settings, partners: Iterable[str]) -> dict[str, str]:
    """Ephemeral keys made once for every worker of a `--dev` run (none otherwise)."""
    if not settings.dev:
        return {}
    env: dict[str, str] = {}
    for partner in partners:
        if not os.environ.get(env_name(partner)) and not (
            settings.keys_dir is not None and (settings.keys_dir / f"{partner}.key").is_file()
        ):
            env[env_name(partner)] = secrets.token_hex(32)
    if (
        settings.blocked_payload != "full"
        and not os.environ.get(KEYS_ENV)
        and settings.payload_keys_file is None
    ):
        env[KEYS_ENV] = "dev:" + base64.b64encode(secrets.token_bytes(32)).decode()
    return env


class Supervisor:
    """Starts, watches and stops the workers; serves their metrics on one endpoint."""

    def __init__(self, settings: Settings, partners: list[str], worker_args: list[str]) -> None:
        self.settings = settings
        self.partners = partners
        self.worker_args = worker_args
        self.workers: list[Worker] = []
        self.stopping = False

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        """Signal handler: stop every worker."""
        log.info("signal %s received: stopping %d worker(s)", signal.Signals(signum).name, len(self.workers))
        self.stopping = True

    def _start_workers(self) -> None:
        shared = shared_dev_secrets(self.settings, self.partners)
        for index in range(self.settings.workers):
            env = {**os.environ, **shared, **worker_environment(self.settings, index)}
            process = subprocess.Popen([sys.executable, "-m", "streams", "run", *self.worker_args], env=env)
            self.workers.append(Worker(index, process, int(env[ENV_PREFIX + "METRICS_PORT"])))
        log.info("started %d workers", len(self.workers))

    def _ready(self) -> bool:
        return bool(self.workers) and all(w.get("/readyz")[0] == 200 for w in self.workers)

    def _healthy(self) -> bool:
        return all(w.process.poll() is None and w.get("/healthz")[0] == 200 for w in self.workers)

    def _serve(self) -> WSGIServer:
        registry = CollectorRegistry()
        registry.register(WorkersCollector(lambda: list(self.workers)))
        s = self.settings
        return serve_http(registry, s.metrics_host, s.metrics_port, self._ready, self._healthy)

    def run(self) -> int:
        """Run the workers until a signal or until one of them exits; the worst exit code."""
        for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(stop, self.request_stop)
        s = self.settings
        if s.create_topics:
            kafka = s.kafka_base()
            from streams.core.rules.loader import load_ruleset

            plain, compacted = guard_topic_layout(s, load_ruleset(Path(s.rules_dir)))
            ensure_topics(kafka, plain, compacted, s.partitions)
        server = self._serve()
        self._start_workers()
        try:
            while not self.stopping:
                exited = [w for w in self.workers if w.process.poll() is not None]
                if exited:
                    log.error(
                        "worker %d exited with %s: stopping the others",
                        exited[0].index,
                        exited[0].process.returncode,
                    )
                    break
                time.sleep(WATCH_INTERVAL_S)
        finally:
            codes = self._stop_workers()
            server.shutdown()
        worst = max(codes, default=0)
        return worst if self.stopping else max(worst, 1)

    def _stop_workers(self) -> list[int]:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        codes = []
        for worker in self.workers:
            try:
                codes.append(worker.process.wait(STOP_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                codes.append(worker.process.wait())
        return [abs(code) for code in codes]
