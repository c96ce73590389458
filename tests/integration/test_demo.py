"""`partner-guard demo` as a new user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.integration.kafka_helpers import ROOT

pytestmark = pytest.mark.integration


def test_demo_runs_to_the_end_with_zero_leaks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams", "demo", "--events", "3000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "every input forwarded or blocked, for every partner" in result.stdout
    assert "0 leaks" in result.stdout
    assert "install-attribution" in result.stdout and "signup-conversions" in result.stdout
    notices = re.search(r"opt-out notices sent: ([\d,]+)", result.stdout)
    assert notices is not None and int(notices.group(1).replace(",", "")) > 0, result.stdout[-3000:]
