"""Linear-time regular expressions (RE2) for everything that touches event data.

Python's `re` backtracks: a pattern with overlapping repetition (`[^@]+@[^@]+\\.`, `(a|a)*b`)
can take time quadratic or exponential in the input, and one hostile value then stalls the
guard. RE2 (`google-re2`) matches in time linear in the input, at the price of refusing
backreferences and lookaround; `compile_linear` raises `LinearRegexError` for those, so
a vocabulary or rule that needs them is refused when it loads, not when an event arrives.

Matching is on `str`; RE2's `\\d`, `\\s`, `\\w` and `\\b` are ASCII-only (callers fold Unicode
digits and compatibility forms first where that matters).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, cast

import re2

from streams.core.errors import PartnerGuardError


class LinearMatch(Protocol):
    """The part of a match object the guard uses."""

    def group(self, index: int = 0, /) -> str:
        """The text of group `index` (0: the whole match)."""
        ...

    def groups(self) -> tuple[str, ...]:
        """The text of every capturing group."""
        ...


class LinearPattern(Protocol):
    """The part of `google-re2`'s compiled pattern the guard uses (as in `re.Pattern`)."""

    def search(self, text: str) -> LinearMatch | None:
        """The first match anywhere in `text`."""
        ...

    def fullmatch(self, text: str) -> LinearMatch | None:
        """A match of the whole of `text`."""
        ...

    def finditer(self, text: str) -> Iterator[LinearMatch]:
        """Every non-overlapping match, left to right."""
        ...

    def split(self, text: str) -> list[str]:
        """`text` split around the matches."""
        ...

    def sub(self, replacement: str, text: str) -> str:
        """`text` with every match replaced (`\\1` refers to a group)."""
        ...


class LinearRegexError(PartnerGuardError, ValueError):
    """A pattern RE2 cannot compile: a syntax error, a backreference or lookaround."""


_NO_MATCH = (-1, -1)


def _options(capture: bool) -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # errors are raised, not written to stderr
    options.never_capture = not capture  # yes/no questions only: RE2 skips the group bookkeeping
    return options


_CAPTURING, _NOT_CAPTURING = _options(capture=True), _options(capture=False)


class LinearRegex:
    """A compiled RE2 pattern: `re.Pattern`'s methods, plus `contains` and `matches_whole`.

    The two yes/no tests call RE2 directly on the UTF-8 bytes, without building a match
    object (about three times cheaper than `search` through `google-re2`'s wrapper: the
    leak scan asks mostly yes/no questions).
    """

    __slots__ = ("_compiled", "_direct")

    def __init__(self, compiled: LinearPattern) -> None:
        self._compiled = compiled
        self._direct = getattr(compiled, "_regexp", None)  # google-re2's RE2 object

    def contains(self, text: str) -> bool:
        """True when the pattern matches somewhere in `text`."""
        return self._yes(re2._Anchor.UNANCHORED, text) if self._direct else bool(self.search(text))

    def matches_whole(self, text: str) -> bool:
        """True when the pattern matches all of `text`."""
        return self._yes(re2._Anchor.ANCHOR_BOTH, text) if self._direct else bool(self.fullmatch(text))

    def _yes(self, anchor: object, text: str) -> bool:
        data = text.encode("utf-8", "surrogatepass")
        spans = cast(list[tuple[int, int]], self._direct.Match(anchor, data, 0, len(data)))  # type: ignore[union-attr]
        return spans[0] != _NO_MATCH

    def search(self, text: str) -> LinearMatch | None:
        """The first match anywhere in `text`."""
        return self._compiled.search(text)

    def fullmatch(self, text: str) -> LinearMatch | None:
        """A match of the whole of `text`."""
        return self._compiled.fullmatch(text)

    def finditer(self, text: str) -> Iterator[LinearMatch]:
        """Every non-overlapping match, left to right."""
        return self._compiled.finditer(text)

    def split(self, text: str) -> list[str]:
        """`text` split around the matches."""
        return self._compiled.split(text)

    def sub(self, replacement: str, text: str) -> str:
        """`text` with every match replaced (`\\1` refers to a group)."""
        return self._compiled.sub(replacement, text)


def compile_linear(pattern: str, capture: bool = True) -> LinearRegex:
    """Compile `pattern` with RE2 or raise `LinearRegexError` saying why.

    With `capture=False` groups are not captured: for patterns asked only `contains` or
    `matches_whole` (rule patterns), which then run faster.
    """
    options = _CAPTURING if capture else _NOT_CAPTURING
    try:
        return LinearRegex(cast(LinearPattern, re2.compile(pattern, options)))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        raise LinearRegexError(text) from None
