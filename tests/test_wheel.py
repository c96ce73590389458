"""The built wheel (not the source tree) installs and runs from any directory.

The wheel is built offline from a copy of the tracked files, installed with `--no-deps`
into a fresh virtual environment whose only extra path is this venv's site-packages
(for the dependencies; its `.pth` files, among them the editable install of `streams`, are
not processed there). The commands then run from an empty temporary directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its bin directory."""
    work = tmp_path_factory.mktemp("wheel")
    tracked = _run(["git", "ls-files", "-z"], ROOT).stdout.split("\0")
    source = work / "src"
    for name in filter(None, tracked):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        path = ROOT / name
        if path.is_symlink():
            target.symlink_to(path.readlink())
        elif path.is_file():
            shutil.copy2(path, target)
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "dist"),
            ".",
        ],
        source,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((work / "dist").glob("partner_guard-*.whl"))
    venv = work / "venv"
    created = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work)
    assert created.returncode == 0, created.stderr
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    install = _run([*pip, "install", "--no-deps", "--no-index", str(wheel)], work)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv / "bin"


def test_the_installed_package_is_the_wheel_not_the_source_tree(installed: Path, tmp_path: Path) -> None:
    where = _run([str(installed / "python"), "-c", "import streams; print(streams.__file__)"], tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout
    assert not Path(where.stdout.strip()).is_relative_to(ROOT)


def test_rules_check_and_decide_run_from_any_directory(installed: Path, tmp_path: Path) -> None:
    rules = tmp_path / "my-rules"
    shutil.copytree(ROOT / "rules", rules)
    guard = str(installed / "partner-guard")
    checked = _run([guard, "rules", "check", str(rules)], tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "ruleset digest sha256:" in checked.stdout
    case = {
        "event": {
            "event_id": "w-1",
            "event_type": "app_install",
            "event_time": "2026-11-28T10:00:00Z",
            "device": {"platform": "ios"},
            "context": {"country": "US"},
        }
    }
    decided = _run(
        [guard, "decide", "--dev", "--rules", str(rules)], tmp_path, orjson.dumps(case).decode() + "\n"
    )
    assert decided.returncode == 0, decided.stderr
    lines = [orjson.loads(line) for line in decided.stdout.splitlines()]
    assert [d["event_id"] for d in lines] == ["w-1", "w-1"] and {d["verdict"] for d in lines} <= {
        "forward",
        "block",
    }
    version = _run([guard, "--version"], tmp_path)
    assert version.returncode == 0 and "event schema fingerprint" in version.stdout


def test_without_a_rules_dir_the_error_names_where_it_looked(installed: Path, tmp_path: Path) -> None:
    result = _run([str(installed / "partner-guard"), "rules", "check"], tmp_path)
    assert result.returncode == 2
    assert str(tmp_path / "rules") in result.stderr and "--rules" in result.stderr


def test_the_replay_report_template_ships_in_the_wheel(installed: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    replayed = _run(
        [
            str(installed / "partner-guard"),
            "replay",
            "--from-file",
            "empty.jsonl",
            "--no-git",
            "--allow-empty",
            "--html",
            "report.html",
        ],
        tmp_path,
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    page = (tmp_path / "report.html").read_text()
    assert "No record selected: nothing was verified." in page
    assert "(git commit not available)" in page  # installed from a wheel: no checkout to ask
