"""Pydantic validation errors of rule and vocabulary files, in the rule author's words.

Each error becomes one (location, message, fix): a misspelled key or a value outside an
enumeration gets a did-you-mean and what is allowed at that place, and one mistake is one
problem — the complaint pydantic adds for the other member of a union, or for a required
key that is only missing because it was misspelled beside it, is dropped.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

Loc = tuple[int | str, ...]


@dataclass(frozen=True, slots=True)
class ExplainedError:
    """One validation error: where (the YAML path), what is wrong, how to fix it."""

    loc: Loc
    message: str
    fix: str


def explain_errors(model: type[BaseModel], errors: list[Any]) -> Iterator[ExplainedError]:
    """The errors of validating a document as `model`, one per mistake."""
    kept = [err for err in errors if not _spurious(err)]
    misspelled = _misspelled_keys(model, kept)
    for err in kept:
        explained = _problem_of(model, err)
        if err["type"] == "missing" and explained.loc in misspelled:
            continue  # the unknown key's did-you-mean already says it
        yield explained


def _allowed_values(expected: str) -> list[str]:
    """The values of a pydantic `literal_error` (its `expected` reads "'a', 'b' or 'c'")."""
    return re.findall(r"'([^']*)'", expected)


def _literal_problem(where: str, value: Any, expected: str) -> tuple[str, str]:
    """(message, fix) for a value outside an enumeration: a did-you-mean and the allowed values."""
    allowed = _allowed_values(expected)
    listed = ", ".join(allowed)
    close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6) if isinstance(value, str) else []
    if close:
        return f"{where}: unknown value {value!r}", f"did you mean '{close[0]}'? (allowed: {listed})"
    return f"{where}: unknown value {value!r}", f"use one of: {listed}"


def _spurious(err: Any) -> bool:
    """An error pydantic adds for the other member of `FieldSpec | str` (the shorthand `name: path`).

    A mapping is a field spec, so the string member's complaint says nothing; anything else
    is neither, and the spec member's complaint is the confusing one.
    """
    loc = err["loc"]
    if loc and loc[-1] == "str" and err["type"] == "string_type":
        return isinstance(err["input"], dict)
    return bool(loc and str(loc[-1]) == "FieldSpec" and err["type"] == "model_type")


def _model_of(annotation: Any) -> Any:
    """The model (or container type) an annotation holds, looking through `X | None` unions."""
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
        return (models or members)[0] if (models or members) else annotation
    return annotation


def _keys_at(model: type[BaseModel], path: Loc) -> list[str]:
    """The keys the model at `path` (inside `model`) allows, as written in YAML; [] if unknown."""
    current: Any = model
    for part in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            named = {f.alias or n: f for n, f in current.model_fields.items()}
            found = named.get(str(part)) or current.model_fields.get(str(part))
            if found is None:
                return []
            current = _model_of(found.annotation)
        elif get_origin(current) in (dict, list, tuple) and get_args(current):
            current = _model_of(
                get_args(current)[-1] if get_origin(current) is dict else get_args(current)[0]
            )
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _fix_for(error_type: str, message: str) -> str:
    if error_type == "extra_forbidden":
        return _unknown_key_fix([])
    if error_type == "missing":
        return "add the missing key"
    return message[0].lower() + message[1:] if message else "correct the value"


def _author_loc(err: Any) -> Loc:
    """An error's location without pydantic's validator and union-member parts."""
    return tuple(p for p in err["loc"] if not str(p).startswith(("function-", "FieldSpec")))


def _misspelled_keys(model: type[BaseModel], errors: list[Any]) -> set[Loc]:
    """Where a required key is missing only because it was misspelled next to it."""
    meant: set[Loc] = set()
    for err in errors:
        loc = _author_loc(err)
        if err["type"] == "extra_forbidden" and loc:
            close = difflib.get_close_matches(str(loc[-1]), _keys_at(model, loc[:-1]), n=1, cutoff=0.6)
            meant.update((*loc[:-1], key) for key in close)
    return meant


def _problem_of(model: type[BaseModel], err: Any) -> ExplainedError:
    """(location, message, fix) of one validation error, in the rule author's words."""
    loc = _author_loc(err)
    if loc and loc[-1] == "str" and err["type"] == "string_type":
        loc = loc[:-1]
        return ExplainedError(
            loc,
            f"{'.'.join(map(str, loc))}: not a field",
            "write a source path (`name: path`) or a mapping {from: path, transform: ...}",
        )
    where = ".".join(str(p) for p in loc) or "(file)"
    if err["type"] == "literal_error":
        message, fix = _literal_problem(where, err["input"], str(err.get("ctx", {}).get("expected", "")))
        return ExplainedError(loc, message, fix)
    if err["type"] == "extra_forbidden" and loc:
        allowed = _keys_at(model, loc[:-1])
        return ExplainedError(
            loc, f"{where}: unknown key '{loc[-1]}'", _unknown_key_fix(allowed, str(loc[-1]))
        )
    return ExplainedError(loc, f"{where}: {err['msg']}", _fix_for(err["type"], err["msg"]))


def _unknown_key_fix(allowed: list[str], key: str = "") -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6) if key else []
    if close:
        return f"did you mean '{close[0]}'? (keys here: {', '.join(allowed)})"
    if allowed:
        return f"remove it or use one of: {', '.join(allowed)}"
    return "remove the key or correct its spelling (see docs/rules.md)"
