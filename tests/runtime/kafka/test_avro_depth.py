"""A recursive writer schema and a record nested tens of thousands deep: refused, never a SIGSEGV.

fastavro's C reader recurses once per nesting level; deep enough, the process dies with
SIGSEGV and no `except` runs. The decoding runs in a child process so that a crash shows as
this test failing (a return code of -11), not as a crashed test run. The writer schema comes
from a real HTTP registry on loopback, through the job's decoder and then replay's.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.codec import encode_avro
from streams.core.schema import load_schema_json
from streams.runtime.kafka.avro_input import AvroDecoder, recursion
from tests.runtime.kafka.fake_registry import fake_registry

ROOT = Path(__file__).resolve().parents[3]
RECURSIVE_ID = 41
DEPTH = 200_000  # ~50,000 levels already overflow the C stack
EVENT: dict[str, Any] = {
    "event_id": "deep-1",
    "event_type": "app_install",
    "event_time": "2026-11-28T10:00:00Z",
    "account_id": "acct-deep",
    "device": {"platform": "android", "ad_id": "6d92078a-8246-4ba4-ae5b-76104861e7dc"},
    "context": {"country": "US"},
    "properties": {"campaign_id": "deep"},
}
NEST = {"type": "record", "name": "Nest", "fields": [{"name": "next", "type": ["null", "Nest"]}]}


def recursive_writer() -> dict[str, Any]:
    """The guard's own event schema plus a last, optional field of a recursive type: a legal
    evolution the guard would otherwise accept (it skips fields it does not know)."""
    schema = copy.deepcopy(load_schema_json())
    schema["fields"].append({"name": "nest", "type": ["null", NEST], "default": None})
    return schema


def deep_record(depth: int = DEPTH) -> bytes:
    """A Confluent-framed record under `recursive_writer`, its `nest` `depth` levels deep.

    The body is the event's own body, then the last field written by hand (fastavro's writer
    would recurse as deep): union branch 1 (`Nest`) `depth` times, then branch 0 (null).
    """
    shallow = encode_avro({**EVENT, "nest": None}, fastavro.parse_schema(recursive_writer()), RECURSIVE_ID)
    return shallow[:-1] + b"\x02" * depth + b"\x00"  # the null `nest` was the last byte


CHILD = """
import json, sys
from pathlib import Path
from streams.audit.replay import replay
from streams.audit.rulesets import RulesetLibrary
from streams.runtime.kafka.avro_input import ReplayAvro
from streams.runtime.config import load_settings
from tests.audit.test_replay_avro import _as_the_job_blocked_it
from tests.conftest import RULES_DIR

raw = Path(sys.argv[1]).read_bytes()
settings = load_settings()
views = _as_the_job_blocked_it(raw, settings)  # decoded and decided as `run` does
job = {"job": [v["reasons"] for v in views], "details": [v["details"] for v in views]}
print(json.dumps(job), flush=True)
verified = replay(views, RulesetLibrary([RULES_DIR]), None, avro=ReplayAvro(settings))
print(json.dumps({"replay": [o.status for o in verified.outcomes]}), flush=True)
"""


def test_a_record_nested_without_bound_is_blocked_by_the_job_and_verified_by_replay(tmp_path: Path) -> None:
    record = tmp_path / "deep.avro"
    record.write_bytes(deep_record())
    with fake_registry({RECURSIVE_ID: json.dumps(recursive_writer())}) as registry:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")}
        env |= {
            "PARTNER_GUARD_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
            "PARTNER_GUARD_INPUT_FORMATS": "internal.events=avro",
            "PARTNER_GUARD_SCHEMA_REGISTRY_URL": registry.url,
        }
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(record)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert child.returncode == 0, f"child exited {child.returncode}: {child.stderr[-2000:]}"
    job, verified = (json.loads(line) for line in child.stdout.splitlines())
    assert job["job"] and {tuple(r) for r in job["job"]} == {("schema_incompatible",)}
    assert all("writer schema is recursive" in d[0] and "Nest -> " in d[0] for d in job["details"])
    assert verified["replay"] and set(verified["replay"]) == {"match"}


def test_the_deep_record_is_what_it_claims(tmp_path: Path) -> None:
    """The crafted record is a valid record under the recursive writer at shallow depth: the
    refusal above is for its schema, not for bytes the reader would have rejected anyway."""
    writer = fastavro.parse_schema(recursive_writer())
    shallow = deep_record(depth=3)
    decoded = fastavro.schemaless_reader(io.BytesIO(shallow[5:]), writer, None)
    assert isinstance(decoded, dict)
    assert decoded["nest"] == {"next": {"next": {"next": None}}}
    assert decoded["event_id"] == "deep-1"


@pytest.mark.parametrize(
    ("schema", "cycle"),
    [
        (NEST, ["Nest", "Nest"]),
        (  # through another record, with namespaces
            {
                "type": "record",
                "name": "A",
                "namespace": "x",
                "fields": [
                    {
                        "name": "b",
                        "type": {
                            "type": "record",
                            "name": "B",
                            "fields": [{"name": "a", "type": ["null", "A"]}],
                        },
                    }
                ],
            },
            ["x.A", "x.B", "x.A"],
        ),
        (  # through an array of maps
            {
                "type": "record",
                "name": "T",
                "fields": [{"name": "c", "type": {"type": "array", "items": {"type": "map", "values": "T"}}}],
            },
            ["T", "T"],
        ),
        (  # a named type used twice is not a cycle
            {
                "type": "record",
                "name": "U",
                "fields": [
                    {"name": "a", "type": {"type": "fixed", "name": "F", "size": 2}},
                    {"name": "b", "type": {"type": "array", "items": "F"}},
                ],
            },
            None,
        ),
        (load_schema_json(), None),
    ],
)
def test_recursion_finds_every_cycle_of_named_types(schema: dict[str, Any], cycle: list[str] | None) -> None:
    assert recursion(fastavro.parse_schema(schema)) == cycle


def test_a_recursive_writer_is_refused_once_for_its_id() -> None:
    decoder = AvroDecoder(lambda _id: json.dumps(recursive_writer()))
    blocked = decoder.decode(deep_record(depth=2))
    assert getattr(blocked, "reason", None) == "schema_incompatible"


@st.composite
def named_schemas(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A record schema of nested inline records, each field a reference to a type already
    defined, to one still being defined (an ancestor: recursion), a primitive, or a new record;
    wrapped in unions, arrays and maps at random. Returns it and whether it is recursive."""
    counter = iter(range(1_000))
    defined: list[str] = []
    recursive = False

    def wrap(schema: Any) -> Any:
        kind = draw(st.sampled_from(["plain", "union", "array", "map"]))
        if kind == "union":
            return ["null", schema]
        if kind in ("array", "map"):
            return {"type": kind, "items" if kind == "array" else "values": schema}
        return schema

    def record(open_names: list[str], depth: int) -> dict[str, Any]:
        nonlocal recursive
        name = f"R{next(counter)}"
        fields = []
        for index in range(draw(st.integers(0, 3))):
            choice = draw(st.sampled_from(["primitive", "defined", "open", "new"]))
            if choice == "new" and depth < 3:
                target: Any = record([*open_names, name], depth + 1)
            elif choice == "open":
                target = draw(st.sampled_from([*open_names, name]))
                recursive = True
            elif choice == "defined" and defined:
                target = draw(st.sampled_from(defined))
            else:
                target = "int"
            fields.append({"name": f"f{index}", "type": wrap(target)})
        defined.append(name)
        return {"type": "record", "name": name, "fields": fields}

    return record([], 0), recursive


@given(named_schemas())
def test_recursion_is_found_exactly_when_a_type_refers_to_itself_or_an_enclosing_type(
    case: tuple[dict[str, Any], bool],
) -> None:
    schema, recursive = case
    assert (recursion(fastavro.parse_schema(schema)) is not None) == recursive
