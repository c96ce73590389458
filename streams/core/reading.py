"""Text as a reader, a browser or a URL parser reads it: the folding the leak scan compares in.

Two forms, both from maintained Unicode data rather than hand lists:

- `fold` (every non-ASCII value): NFKC (fullwidth and compatibility forms), the full stops
  WHATWG URL parsing accepts read as `.` (U+3002, U+FF0E, U+FF61), every
  Default_Ignorable_Code_Point and format character removed (zero-width space, soft
  hyphen, combining grapheme joiner, variation selectors, Hangul fillers, bidi marks), and
  every script's decimal digits read as ASCII digits. `Default_Ignorable_Code_Point` comes
  from the `regex` package's Unicode tables (the standard library has no such property).
- `reader_form` (a folded value that is still not ASCII): also without combining marks
  (`\\p{M}`: a mark on a letter or digit does not change what a reader takes it for, and
  browsers' find-in-page ignores them too), and with every character that Unicode TS #39
  lists as confusable with an ASCII one read as that ASCII character (Cyrillic `а` is `a`,
  `․` ONE DOT LEADER is `.`). The confusables come from `confusable_homoglyphs`, which
  ships the Unicode consortium's `confusables.txt` as data; its pairs are grouped into
  the skeleton classes TS #39 defines, and each class is read as its ASCII member.

ASCII text is never changed by either (the fast path: most stream values are ASCII).
"""

from __future__ import annotations

import unicodedata
from functools import cache, lru_cache

import regex
from confusable_homoglyphs import confusables

# U+3002 IDEOGRAPHIC FULL STOP; NFKC already maps U+FF0E to `.` and U+FF61 to U+3002.
_URL_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_INVISIBLE = regex.compile(r"[\p{Default_Ignorable_Code_Point}\p{Cf}]+")
_MARKS = regex.compile(r"\p{M}+")
_SMALL_CAPITAL = "LATIN LETTER SMALL CAPITAL "
_DIGIT_RANGE = range(0x80, 0x20000)
_LRM = "\u200e"  # the data wraps right-to-left characters in LEFT-TO-RIGHT MARKs
_MEMO_MAX_CHARS = 256  # short texts repeat (titles, names); long ones would pin memory


def fold(text: str, limit: int | None = None) -> str:
    """NFKC, WHATWG dots as `.`, no default-ignorable or format characters, ASCII digits.

    With `limit`, a text NFKC makes longer than that comes back as NFKC made it (the caller
    refuses it unread; NFKC can make a character 18 long).
    """
    normalized = unicodedata.normalize("NFKC", text)
    if limit is not None and len(normalized) > limit:
        return normalized
    out: str = _INVISIBLE.sub("", normalized.translate(_URL_DOTS))
    return out if out.isascii() else out.translate(_digit_table())


@cache
def _digit_table() -> dict[int, str]:
    """Every other script's decimal digit (Unicode `Nd`, all below U+20000) -> its ASCII digit."""
    return {code: str(unicodedata.decimal(chr(code))) for code in _DIGIT_RANGE if chr(code).isdecimal()}


def prepare() -> None:
    """Build the folding tables now (about 0.2 s), not on the first non-ASCII value decided."""
    _digit_table()
    _skeleton_map()


def _ascii_preference(char: str) -> tuple[int, str]:
    """Which member names a skeleton class: an ASCII lower-case letter, an upper-case one, an
    ASCII digit, any other ASCII character, then any character."""
    if char.isascii():
        if char.isalpha():
            return (0 if char.islower() else 1, char)
        return (2 if char.isdigit() else 3, char)
    return (4, char)


@cache
def _skeleton_map() -> dict[int, str]:
    """Non-ASCII character -> the ASCII (or representative) text TS #39 reads it as."""
    parent: dict[str, str] = {}

    def find(char: str) -> str:
        while parent.get(char, char) != char:
            char = parent[char]
        return char

    def union(a: str, b: str) -> None:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            first, second = sorted((root_a, root_b), key=_ascii_preference)
            parent[second] = first

    sequences: dict[str, str] = {}  # a character TS #39 reads as several (`ⅿ` -> `rn`)
    for key, entries in confusables.confusables_data.items():
        source = key.replace(_LRM, "")
        for entry in entries:
            other = str(entry["c"]).replace(_LRM, "")
            if len(source) == 1 and len(other) == 1:
                parent.setdefault(source, source)
                parent.setdefault(other, other)
                union(source, other)
            elif len(source) > 1 and len(other) == 1:
                sequences.setdefault(other, source)
            elif len(source) == 1 and len(other) > 1:
                sequences.setdefault(source, other)
    # Small capitals (`ᴅ`, what Cherokee `ꭰ` is confusable with) read as their letter, as the
    # Unicode names say (LATIN LETTER SMALL CAPITAL D): TS #39 leaves some, and what looks
    # like them, without an ASCII one.
    for code in range(0x80, 0x10000):
        name = unicodedata.name(chr(code), "")
        if name.startswith(_SMALL_CAPITAL) and len(name) == len(_SMALL_CAPITAL) + 1:
            small, letter = chr(code), name[-1].lower()
            parent.setdefault(small, small)
            parent.setdefault(letter, letter)
            union(small, letter)
    table: dict[int, str] = {}
    for char in parent:
        root = find(char)
        if not char.isascii() and root != char:
            table[ord(char)] = root.lower() if root.isascii() else root
    for char, target in sequences.items():
        if not char.isascii() and ord(char) not in table:
            table[ord(char)] = "".join(table.get(ord(c), c) for c in target).lower()
    return table


def reader_form(folded: str) -> str:
    """A folded text as a reader takes it, lower-cased: no combining marks, TS #39 look-alikes
    read as ASCII (mapped before and after lower-casing: `Ꭰ` is `D`, so `d`). ASCII text
    comes back only lower-cased."""
    if folded.isascii():
        return folded.lower()
    return _reader_form_memo(folded) if len(folded) <= _MEMO_MAX_CHARS else _reader_form(folded)


def _reader_form(folded: str) -> str:
    table = _skeleton_map()
    stripped = unicodedata.normalize("NFC", _MARKS.sub("", unicodedata.normalize("NFD", folded)))
    return stripped.translate(table).lower().translate(table)


_reader_form_memo = lru_cache(maxsize=16384)(_reader_form)
