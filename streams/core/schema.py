"""The internal event schema and its field-level privacy tags.

The schema ships inside the package (`streams/core/data/internal_event.avsc`, a link to the
repository's `schemas/internal_event.avsc` that the wheel build copies) and is read with
`importlib.resources`, so an installed wheel works from any directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

EVENT_SCHEMA_FILE = "internal_event.avsc"

FORBIDDEN_TAGS = frozenset({"content", "url", "search"})
RECORD_TAG = "record"


@dataclass(frozen=True, slots=True)
class PrivacyTags:
    """Maps dotted field paths (`device.ad_id`) to their privacy tag."""

    tags: dict[str, str]

    def tag(self, path: str) -> str | None:
        """The tag of a path, or None when the schema does not declare the field."""
        return self.tags.get(path)


def _walk(fields: list[dict[str, Any]], prefix: str, out: dict[str, str]) -> None:
    for fld in fields:
        path = f"{prefix}{fld['name']}"
        out[path] = fld.get("privacy", "none")
        types = fld["type"] if isinstance(fld["type"], list) else [fld["type"]]
        for typ in types:
            if isinstance(typ, dict) and typ.get("type") == "record":
                out[path] = RECORD_TAG if out[path] == "none" else out[path]
                _walk(typ["fields"], path + ".", out)


def event_schema_text() -> str:
    """The event schema as shipped in the package (JSON text)."""
    return resources.files("streams.core").joinpath("data", EVENT_SCHEMA_FILE).read_text(encoding="utf-8")


def load_schema_json() -> dict[str, Any]:
    """The raw event schema, with its privacy attributes."""
    loaded: dict[str, Any] = json.loads(event_schema_text())
    return loaded


@cache
def event_schema() -> Any:
    """The parsed Avro schema for decoding and encoding."""
    return fastavro.parse_schema(load_schema_json())


def privacy_tags_of(schema: dict[str, Any]) -> PrivacyTags:
    """The privacy tags of every field of an event schema (parsed JSON), e.g. one from git history."""
    out: dict[str, str] = {}
    _walk(schema["fields"], "", out)
    return PrivacyTags(out)


@cache
def privacy_tags() -> PrivacyTags:
    """The privacy tags of every field of the internal event schema shipped in the package."""
    return privacy_tags_of(load_schema_json())


def schema_fingerprint(schema: dict[str, Any] | str) -> str:
    """SHA-256 (hex) of an Avro schema's Parsing Canonical Form (docs and tags ignored)."""
    parsed = fastavro.parse_schema(schema if isinstance(schema, dict) else json.loads(schema))
    digest: str = fingerprint(to_parsing_canonical_form(parsed), "SHA-256")
    return digest


def event_schema_fingerprint() -> str:
    """The fingerprint of the guard's own event schema (what `avro_schema_fingerprint` must be)."""
    return schema_fingerprint(load_schema_json())
