"""The second line of defense: scan every record about to be forwarded for forbidden content.

Default-deny projection should already have removed everything sensitive; the scan sees
what the partner would see and checks keys and values at any depth — numbers as their
decimal text, strings percent-decoded and lowercased, and non-ASCII strings also folded the
way readers, browsers and URL parsers read them (`streams.core.reading`: NFKC, WHATWG full
stops, default-ignorable characters dropped, every script's digits as ASCII digits; then
without combining marks and with TS #39 look-alikes read as ASCII) — for:

- URLs (with or without scheme, app deep links), raw email, phone-shaped digit runs, IP
  addresses not truncated to /24 (IPv4, or the IPv4 an IPv6 address carries) or /48;
- catalogue title ids and names, names also with their separators removed or changed and
  with digits appended (`StrangerThings4`, `stranger.things`);
- free text: more words than `max_words` (a hyphenated or underscored run of words is
  text), or more tokens than `max_tokens`; values the ruleset itself enumerates (event
  types, `values:` lists) are vocabulary, not text;
- the event's own identifiers in every spelling a partner could join on: compared after
  compaction (letters and digits only, so a UUID with or without hyphens, any case), plus
  unkeyed SHA-256/SHA-1/MD5 digests (hex and base64) of the person's ids, of the
  normalized email and phone (as a hashing transform would send them), the phone's digits
  whatever separates them, and an IPv4 address as an integer.

Every pattern runs on RE2 (linear time, `streams.core.regex`); values longer than
`MAX_SCANNED_CHARS` are refused unread.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from bisect import bisect_left
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from streams.core.identifiers import embedded_ipv4, national_digits, normalize_email, normalize_phone
from streams.core.memo import remember
from streams.core.models import MAX_ID_CHARS as _MAX_ID_CHARS
from streams.core.models import Event
from streams.core.reading import fold, prepare, reader_form
from streams.core.regex import LinearRegex, compile_linear
from streams.core.rules.model import LeakScanFile, RuleFile

_URL = (
    r"[a-z][a-z0-9+.\-]{1,30}:/{1,3}[^\s]"  # scheme://… and app deep links (app://…)
    r"|\bwww\d?\."
    r"|\b[a-z0-9\-]{1,63}(?:\.[a-z0-9\-]{1,63})*\.[a-z]{2,24}\b"  # bare domains
    r"|(?:^|/)(?:watch|title|browse|search)/"
)
_EMAIL = compile_linear(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_IPV4 = compile_linear(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b")
# dotted hosts with a hex (`0x..`) or octal (`0..`) part, as URL parsers read IPv4 addresses
_WHATWG_IPV4 = compile_linear(r"\b(?:0x[0-9a-f]*|\d+)(?:\.(?:0x[0-9a-f]*|\d+)){1,3}\b")
_IPV6_CANDIDATE = compile_linear(r"[0-9a-f]*:[0-9a-f:.]*:[0-9a-f.]*")
# 7 to 15 digits with only separators between them, anywhere in the text
_PHONE = compile_linear(r"\d(?:[\s().\-/_~+]*\d){6,14}")
_PHONE_MIN_DIGITS = 7
_UUID_CHARS = 36
# byte tables: `bytes.translate` is several times faster than `str.translate`
_DIGIT_BYTES = b"0123456789"
_NON_DIGIT_ASCII = bytes(c for c in range(128) if not 48 <= c <= 57)
_NON_ALNUM_ASCII = bytes(c for c in range(128) if not chr(c).isalnum())
_ASCII_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
# attribute shapes that are neither phone numbers nor free text: RFC 3339 times, UUIDs
# (ad ids), IPv4 addresses (already checked for truncation)
_KNOWN_SHAPE = compile_linear(
    r"\d{4}-\d{2}-\d{2}(?:t\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z|[+\-]\d{2}:\d{2})?)?"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
)
_HEX_DIGITS = frozenset("0123456789abcdef")
_NOT_LETTERS = compile_linear(r"[^\pL]+")
# token separators besides white space: `best-sci-fi-shows` and `best_sci_fi_shows` are 4 tokens
_SEPARATORS_TO_SPACE = bytes.maketrans(b"-_.+~/", b"      ")
_NON_LETTERS_TO_SPACE = bytes(c if chr(c).isalpha() else 32 for c in range(128)) + bytes(range(128, 256))
_KEY_SPLIT = compile_linear(r"[^a-z0-9]+")
_CAMEL = compile_linear(r"([\pL\d])(\p{Lu})")
_MAX_DECODE_ROUNDS = 4
_SUBSTRING_MIN = 6  # a raw value this long (letters and digits) is also found inside a text
_WORD_MIN = 2  # letters; a shorter alphabetic token (`a`, `x`) is not counted as a word
MAX_SCANNED_CHARS = 4096  # no partner attribute is this long; longer values are refused unread
_MEMO_MAX_CHARS = 256  # memoize only short texts: stream values repeat, long ones rarely do
_MEMO_LIMIT = 100_000
_HASHES = (hashlib.sha256, hashlib.sha1, hashlib.md5)  # the digests partners match on
# Marks a raw value that is a digit run of the person's phone: compared with a value's digits
# alone (`650*555*1212`). No compacted value holds it (compact forms are letters and digits).
DIGITS_MARK = "#"


def _decoded(text: str) -> str:
    """Percent-decode (double encoding included) and Unicode-fold until stable; case kept."""
    out = text if text.isascii() else fold(text, MAX_SCANNED_CHARS)
    for _ in range(_MAX_DECODE_ROUNDS):
        if "%" not in out:
            break
        decoded = unquote(out)
        if not decoded.isascii():
            decoded = fold(decoded, MAX_SCANNED_CHARS)
        if decoded == out:
            break
        out = decoded
    return out


def _digits_of(text: str) -> str:
    """The ASCII digits of a text, in order, whatever separates them."""
    if text.isascii():
        return text.encode("ascii").translate(None, _NON_DIGIT_ASCII).decode("ascii")
    return "".join(c for c in text if "0" <= c <= "9")


def _compact(lowered: str) -> str:
    """Letters and digits only: the spelling-independent form raw values are compared in."""
    if lowered.isascii():
        return lowered.encode("ascii").translate(None, _NON_ALNUM_ASCII).decode("ascii")
    return "".join(filter(str.isalnum, lowered))


def _tokens(lowered: str) -> list[str]:
    """Tokens split at white space and at `-`, `_`, `.`, `+`, `~`, `/`."""
    data = lowered.encode("utf-8", "surrogatepass").translate(_SEPARATORS_TO_SPACE)
    return data.decode("utf-8", "surrogatepass").split()


def _letter_runs(lowered: str) -> str:
    """The runs of letters in a text, one space between them (`strangerthings4` → `strangerthings`)."""
    if lowered.isascii():
        return " ".join(lowered.encode("ascii").translate(_NON_LETTERS_TO_SPACE).decode("ascii").split())
    return " ".join(_NOT_LETTERS.sub(" ", lowered).split())


def _leaky_ipv6(address: ipaddress.IPv6Address) -> bool:
    """True when an IPv6 address keeps more than /48, or a whole IPv4 address it carries."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed[3] != 0
    carried = embedded_ipv4(address)
    if carried is not None and carried.packed[3] != 0:
        return True
    return bool(int(address) & ((1 << 80) - 1))


def _whatwg_ipv4(candidate: str) -> int | None:
    """The IPv4 address a URL parser reads in a host written with hex or octal parts
    (`0xcb.0.0x71.0xc3`, `0313.0.0161.0303`, `0xcb.0.29123`), per the WHATWG URL standard's
    IPv4 parser; None when it is not one, or uses neither (plain dotted decimal is `_IPV4`'s)."""
    parts = candidate.split(".")
    if not 2 <= len(parts) <= 4:
        return None
    numbers, hexadecimal, octal = [], False, False
    for part in parts:
        if part.startswith("0x"):
            digits, base, hexadecimal = part[2:] or "0", 16, True
        elif len(part) > 1 and part.startswith("0"):
            digits, base, octal = part[1:], 8, True
        else:
            digits, base = part, 10
        try:
            numbers.append(int(digits, base))
        except ValueError:
            return None
    # an octal part alone is not enough in fewer than three parts: `1.05` is a number
    if not (hexadecimal or (octal and len(parts) >= 3)):
        return None
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    address = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        address += number << (8 * (3 - index))
    return address


def _leaky_ip(text: str) -> bool:
    """True when the text holds an IP address that is not truncated to /24 or /48 (IPv4 also
    as a URL parser reads hex and octal parts)."""
    for match in _IPV4.finditer(text):
        octets = [int(g) for g in match.groups()]
        if all(o <= 255 for o in octets) and octets[3] != 0:
            return True
    if "0" in text:
        for candidate in _WHATWG_IPV4.finditer(text):
            parsed = _whatwg_ipv4(candidate.group(0))
            if parsed is not None and parsed & 0xFF:
                return True
    if ":" in text:
        for candidate in _IPV6_CANDIDATE.finditer(text):
            try:
                address = ipaddress.ip_address(candidate.group(0))
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv6Address) and _leaky_ipv6(address):
                return True
    return False


def _title_name_pattern(names: Iterable[str]) -> LinearRegex | None:
    """Whole titles in a text reduced to its letter runs, separators optional between words.

    `Stranger Things` matches `stranger things`, `stranger_things`, `StrangerThings4`,
    `stranger.things.s04`, but not `strangers` or `darkness` for `Dark`.
    """
    forms: set[str] = set()
    for name in names:
        words = _letter_runs(reader_form(fold(name))).split()
        if words:
            forms.add(" ?".join(words))
    if not forms:
        return None
    return compile_linear("(?:^| )(?:" + "|".join(sorted(forms, key=len, reverse=True)) + ")(?: |$)")


def _digests(text: str) -> tuple[str, ...]:
    """SHA-256, SHA-1 and MD5 of the text, as hex and as base64 (compacted: either case, and
    standard or URL-safe base64, with or without padding, compact to the same letters)."""
    data = text.encode("utf-8")
    out = []
    for h in _HASHES:
        digest = h(data).digest()
        out.append(digest.hex())
        out.append(base64.b64encode(digest).translate(_ASCII_LOWER, b"+/=").decode("ascii"))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Digests:
    """The digests of one value, for the scan: as a tuple, a set, and the shortest's length."""

    values: tuple[str, ...]  # shortest first
    lengths: tuple[int, ...]
    members: frozenset[str]
    hexadecimal: tuple[str, ...]  # the hex ones, shortest first: all a hex value can hold
    hex_lengths: tuple[int, ...]

    @property
    def shortest(self) -> int:
        return self.lengths[0] if self.lengths else 1 << 30

    @classmethod
    def of(cls, values: Iterable[str]) -> _Digests:
        ordered = tuple(sorted(set(values), key=len))
        hexadecimal = tuple(v for v in ordered if _HEX_DIGITS.issuperset(v))
        return cls(
            ordered, tuple(map(len, ordered)), frozenset(ordered), hexadecimal, tuple(map(len, hexadecimal))
        )

    def inside(self, compact: str, hexadecimal: bool) -> bool:
        """True when a digest shorter than the compacted text is inside it."""
        size = len(compact)
        if hexadecimal:
            return any(raw in compact for raw in self.hexadecimal[: bisect_left(self.hex_lengths, size)])
        return any(raw in compact for raw in self.values[: bisect_left(self.lengths, size)])


@lru_cache(maxsize=8192)  # about 2 KB each
def _id_spellings(identifier: str) -> _Digests:
    """Unkeyed digests of one of the person's ids, as written and lower-cased: the same for
    every partner, so partners could join on them (unlike the keyed pseudonym)."""
    forms = dict.fromkeys((identifier, identifier.strip(), identifier.strip().lower()))
    return _Digests.of(d for form in forms if form for d in _digests(form))


@lru_cache(maxsize=16384)
def _email_spellings(email: str) -> _Digests:
    """Digests of the normalized email, with and without gmail dot removal."""
    forms = {normalize_email(email, remove_dots) for remove_dots in (False, True)}
    return _Digests.of(d for form in sorted(f for f in forms if f) for d in _digests(form))


@lru_cache(maxsize=16384)
def _phone_spellings(phone: str, regions: tuple[str, ...]) -> tuple[_Digests, tuple[str, ...]]:
    """(digests of the phone in E.164 and as digits, parsed in each region; its digit runs:
    the national number, E.164 without `+` and the digits as written), the runs compared with
    the digits of every value whatever separates them."""
    forms: set[str] = set()
    runs: set[str] = set()
    for region in regions:
        e164 = normalize_phone(phone, region, "e164")
        if e164:
            forms.update((e164, e164.lstrip("+")))
            runs.add(e164.lstrip("+"))
            national = national_digits(phone, region)
            if national:
                runs.add(national)
    runs.add(_digits_of(fold(phone)))
    digests = _Digests.of(d for form in sorted(forms) for d in _digests(form))
    return digests, tuple(sorted(r for r in runs if len(r) >= _PHONE_MIN_DIGITS))


@lru_cache(maxsize=65536)
def _ip_spellings(ip: str) -> tuple[str, ...]:
    """An IP address as hex digits (IPv6 exploded) and an IPv4 one as an integer."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ()
    forms = []
    if isinstance(address, ipaddress.IPv6Address):
        forms.append(address.exploded.replace(":", ""))
        carried = embedded_ipv4(address)
        if carried is None:
            return tuple(forms)
        address = carried
    return (*forms, str(int(address)), address.packed.hex())  # 3405803971 for 203.0.113.195


def compact_value(text: str) -> str:
    """A raw value as `raw_values_of` keeps it: decoded, folded, letters and digits, lower case."""
    if text.isascii() and "%" not in text:  # the common case, in one pass
        return text.encode("ascii").translate(_ASCII_LOWER, _NON_ALNUM_ASCII).decode("ascii")
    return _compact(_decoded(text).lower())


def raw_values_of(strings: Iterable[str | None]) -> frozenset[str]:
    """Normalize an event's raw sensitive values for `LeakScanner.scan` (compacted)."""
    return frozenset(c for c in map(compact_value, filter(None, strings)) if c)


class LeakScanner:
    """A compiled leak scan. Build it once per ruleset with `LeakScanner.from_config`.

    Findings for a text depend only on the text and the vocabulary, so they are memoized:
    stream values (countries, platforms, coarse times) repeat a lot.
    """

    def __init__(
        self,
        url: LinearRegex,
        title_ids: LinearRegex | None,
        title_names: LinearRegex | None,
        forbidden_key_tokens: frozenset[str],
        max_words: int,
        max_tokens: int,
        vocabulary: frozenset[str] = frozenset(),
        phone_regions: tuple[str, ...] = ("US",),
    ) -> None:
        self._url = url
        self._title_ids = title_ids
        self._title_names = title_names
        self.forbidden_key_tokens = forbidden_key_tokens
        self.max_words = max_words
        self.max_tokens = max_tokens
        self.vocabulary = vocabulary
        self.phone_regions = phone_regions
        self._memo: dict[str, tuple[str | None, tuple[str, ...]]] = {}

    @classmethod
    def from_config(
        cls,
        config: LeakScanFile,
        vocabulary: Iterable[str] = (),
        phone_regions: Iterable[str] = ("US",),
    ) -> LeakScanner:
        """Compile the ruleset's vocabulary (title id patterns must compile with RE2).

        `vocabulary` holds the values the rules themselves enumerate (never free text);
        `phone_regions` the regions the rules parse national phone numbers in.
        """
        prepare()  # the folding tables, before the first value is scanned
        title_ids = "|".join(f"(?:{p})" for p in config.title_id_patterns)
        names = [n for n in config.title_names if n.strip()]
        return cls(
            url=compile_linear(_URL),
            title_ids=compile_linear(title_ids) if title_ids else None,
            title_names=_title_name_pattern(names),
            forbidden_key_tokens=frozenset(t.lower() for t in config.forbidden_key_tokens),
            max_words=config.max_words,
            max_tokens=config.max_tokens,
            vocabulary=frozenset(v.lower() for v in vocabulary),
            phone_regions=tuple(dict.fromkeys(phone_regions)),
        )

    def clear_memo(self) -> None:
        """Forget memoized findings (benchmarks measure the cold cost with it)."""
        self._memo.clear()

    def _pattern_finding(self, text: str, lowered: str, words_are_text: bool) -> str | None:
        """Findings that depend on the text alone."""
        if len(lowered) == 64 and _HEX_DIGITS.issuperset(lowered):
            return None  # a SHA-256/HMAC output: nothing readable can hide in it
        # a time, a UUID or an IPv4 address: nothing else fits (all but UUIDs start with a digit)
        if (lowered[:1].isdigit() or len(lowered) == _UUID_CHARS) and _KNOWN_SHAPE.matches_whole(lowered):
            is_ipv4 = "." in lowered and "-" not in lowered and ":" not in lowered
            return "ip" if is_ipv4 and _leaky_ip(lowered) else None
        if ("." in lowered or ":" in lowered or "/" in lowered) and self._url.contains(lowered):
            return "url"
        if "@" in lowered and _EMAIL.contains(lowered):
            return "email"
        data = lowered.encode("utf-8", "surrogatepass")
        digits = len(data) - len(data.translate(None, _DIGIT_BYTES))  # ASCII digits once folded
        has_digit = digits > 0
        if has_digit and self._title_ids is not None and self._title_ids.contains(lowered):
            return "title_id"
        if self._title_names is not None and self._title_names.contains(_letter_runs(lowered)):
            return "title_name"
        if has_digit and ("." in lowered or ":" in lowered) and _leaky_ip(lowered):
            return "ip"
        if digits >= _PHONE_MIN_DIGITS and _PHONE.contains(lowered):
            return "phone"
        if lowered in self.vocabulary:
            return None
        if len(lowered.split()) > self.max_words or len(_tokens(lowered)) > self.max_tokens:
            return "free_text"
        if words_are_text:
            mixed_case = not (text.islower() or text.isupper())
            spaced = _CAMEL.sub(r"\1 \2", text).lower() if mixed_case else lowered
            words = [t for t in _tokens(spaced) if len(t) >= _WORD_MIN and t.isalpha()]
            if len(words) > self.max_words:
                return "free_text"
        return None

    def _text_finding(self, text: str, words_are_text: bool) -> tuple[str | None, tuple[str, ...]]:
        """(pattern finding, compacted forms) of a key or value.

        ASCII text is read as it is; other text once folded, and, when that finds nothing,
        once more as a reader takes it (`reading.reader_form`: no combining marks, look-alike
        letters and dots read as ASCII). Both forms are compared with the raw values.
        """
        if len(text) > MAX_SCANNED_CHARS:
            return "oversized_value", ()
        decoded = _decoded(text)
        if len(decoded) > MAX_SCANNED_CHARS:  # NFKC can expand a character up to 18 times
            return "oversized_value", ()
        lowered = decoded.lower()
        finding = self._pattern_finding(decoded, lowered, words_are_text)
        # a value the rules enumerate says nothing beyond the rule's own choice: not compared
        # with the event's raw values (an empty compact form never matches one)
        if lowered in self.vocabulary:
            return finding, ()
        forms = [lowered]
        if "%" in text:  # read undecoded too: `650555%1212` decodes to `650555\x1212`
            undecoded = text if text.isascii() else fold(text)
            forms.append(undecoded.lower())
            if finding is None:
                finding = self._pattern_finding(undecoded, forms[-1], words_are_text)
        if not decoded.isascii():
            reader = reader_form(decoded)
            if reader != lowered:
                forms.append(reader)
                if finding is None and len(reader) <= MAX_SCANNED_CHARS:
                    finding = self._pattern_finding(reader, reader, words_are_text)
        return finding, tuple(_compact(form) for form in forms)

    def _scan_value(self, text: str, raw: RawValues, check_raw: bool = True) -> str | None:
        if len(text) == 64 and _HEX_DIGITS.issuperset(text.lower()):
            # a hash or pseudonym (unique per event: not memoized); only a raw value can hide in it
            return "raw_value" if check_raw and raw.in_compact(text.lower(), hexadecimal=True) else None
        try:
            finding, compacts = self._memo[text]
        except KeyError:
            finding, compacts = self._text_finding(text, words_are_text=True)
            if len(text) <= _MEMO_MAX_CHARS:
                remember(self._memo, text, (finding, compacts), _MEMO_LIMIT)
        if finding is not None or not check_raw:
            return finding
        return "raw_value" if raw.in_any(compacts) else None

    def forbidden_key_token(self, key: str) -> str | None:
        """The first token of a key (split at separators and camelCase) that is a forbidden key token."""
        tokens = _KEY_SPLIT.split(_CAMEL.sub(r"\1_\2", key).lower())
        return next((t for t in tokens if t in self.forbidden_key_tokens), None)

    def key_finding(self, key: str, raw_values: frozenset[str] = frozenset()) -> str | None:
        """Why a key is forbidden: a content token (`page_url`) or a forbidden value shape."""
        return self._key_finding(key, RawValues.of(raw_values))

    def _key_finding(self, key: str, raw: RawValues) -> str | None:
        if self.forbidden_key_token(key) is not None:
            return "forbidden_key"
        finding, compacts = self._text_finding(key, words_are_text=False)
        if finding is None and raw.in_any(compacts):
            return "raw_value"
        return finding

    def _spellings(self, event: Event) -> tuple[list[_Digests], tuple[str, ...], tuple[str, ...]]:
        """(digests of the person's ids, email and phone; the IP's other spellings; the phone's
        digit runs)."""
        digests: list[_Digests] = []
        runs: tuple[str, ...] = ()
        for identifier in (event.account_id, event.profile_id):
            if identifier:
                digests.append(_id_spellings(identifier))
        device, user, context = event.device, event.user, event.context
        if device is not None:
            for identifier in (device.device_id, device.ad_id):
                if identifier and len(identifier) <= _MAX_ID_CHARS:
                    digests.append(_id_spellings(identifier))
        if user is not None:
            if user.email:
                digests.append(_email_spellings(user.email))
            if user.phone:
                phone_digests, runs = _phone_spellings(user.phone, self.phone_regions)
                digests.append(phone_digests)
        other = _ip_spellings(context.ip) if context is not None and context.ip else ()
        return digests, other, runs

    def spellings(self, event: Event) -> frozenset[str]:
        """Other spellings of the person's identifiers a partner could join on, compacted.

        Unkeyed digests (SHA-256, SHA-1, MD5; hex and base64) of the account, profile,
        device and advertising ids; hashed email and phone (normalized as the hashing
        transforms would, in every phone region the rules use); the phone's digit runs
        (marked `DIGITS_MARK`); and the IP address as an integer or hex digits.
        `raw_values_of` covers the raw values themselves; `raw_values` builds both at once,
        ready for the scan.
        """
        digests, other, runs = self._spellings(event)
        every = (d for group in digests for d in group.values)
        return frozenset((*every, *other, *(DIGITS_MARK + r for r in runs)))

    def raw_values(self, event: Event, own: frozenset[str]) -> RawValues:
        """What the scan compares a record with: the event's own values (`own`, made by
        `raw_values_of`) and every spelling of the person's identifiers (`spellings`)."""
        digests, other, runs = self._spellings(event)
        contained = [raw for raw in own if len(raw) >= _SUBSTRING_MIN]
        contained.extend(raw for raw in other if len(raw) >= _SUBSTRING_MIN)
        return RawValues(own.union(other), tuple(contained), tuple(digests), runs)

    def scan(
        self,
        record: dict[str, Any],
        raw_values: RawValues | frozenset[str] = frozenset(),
        derived: Collection[str] = frozenset(),
    ) -> list[str]:
        """Findings as `path: kind`; an empty list means the record may leave.

        Top-level keys are the rule's output names, checked once when the rules load;
        keys below them (which projection never produces) are scanned here. Top-level
        fields named in `derived` were produced by a one-way transform (hash, pseudonym,
        truncation) of the event's own value: they are checked for shape, and not against
        the event's raw values they were derived from.
        """
        findings: list[str] = []
        raw = raw_values if isinstance(raw_values, RawValues) else RawValues.of(raw_values)
        for key, value in record.items():
            self._walk(value, str(key), raw, findings, check_raw=key not in derived)
        return findings

    def _walk(self, value: Any, path: str, raw: RawValues, out: list[str], check_raw: bool = True) -> None:
        if isinstance(value, str):
            finding = self._scan_value(value, raw, check_raw)
            if finding:
                out.append(f"{path}: {finding}")
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, int | float):
            try:
                text = str(value)  # the partner reads the number's digits like a string's
            except ValueError:  # an int too long for its decimal text
                out.append(f"{path}: oversized_value")
                return
            finding = self._scan_value(text, raw, check_raw)
            if finding:
                out.append(f"{path}: {finding}")
        elif isinstance(value, dict):
            out.append(f"{path}: nested_value")
            for key, item in value.items():
                child = f"{path}.{key}"
                finding = self._key_finding(str(key), raw)
                if finding:
                    out.append(f"{child}: key_{finding}")
                self._walk(item, child, raw, out)
        elif isinstance(value, list | tuple):
            out.append(f"{path}: nested_value")
            for index, item in enumerate(value):
                self._walk(item, f"{path}[{index}]", raw, out)
        else:
            out.append(f"{path}: unknown_type")


@dataclass(frozen=True, slots=True)
class RawValues:
    """The event's raw values and spellings, sorted for the comparisons (`LeakScanner.raw_values`).

    A compacted value is a raw one when it equals one, or holds one of at least
    `_SUBSTRING_MIN` characters (`contained`; the digests, longer, only in values at least
    as long); its digits alone are compared with the phone's digit runs.
    """

    exact: frozenset[str]
    contained: tuple[str, ...]
    digests: tuple[_Digests, ...] = ()  # per id, email, phone: shared with the caches, not copied
    digit_runs: tuple[str, ...] = ()
    shortest_digest: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shortest_digest", min((g.shortest for g in self.digests), default=1 << 30))

    @classmethod
    def of(cls, raw_values: frozenset[str]) -> RawValues:
        """Sort a set of raw values and spellings (`raw_values_of` | `LeakScanner.spellings`)."""
        contained, runs = [], []
        for raw in raw_values:
            if raw.startswith(DIGITS_MARK):
                runs.append(raw[len(DIGITS_MARK) :])
            elif len(raw) >= _SUBSTRING_MIN:
                contained.append(raw)
        return cls(raw_values, tuple(contained), (), tuple(runs))

    def in_compact(self, compact: str, hexadecimal: bool = False) -> bool:
        """True when the compacted text is, or holds, a raw value (`hexadecimal`: the text is
        hex digits, so only hex digests can be inside it)."""
        if not compact:
            return False
        if compact in self.exact:
            return True
        size = len(compact)
        if size < _SUBSTRING_MIN:
            return False
        if any(raw in compact for raw in self.contained):
            return True
        if size < self.shortest_digest:
            return False  # most values: shorter than any digest
        # equal to a digest, or one inside a longer value (`uid_…`)
        return any(compact in group.members or group.inside(compact, hexadecimal) for group in self.digests)

    def in_any(self, compacts: tuple[str, ...]) -> bool:
        """True when any compacted form of a value is, or holds, a raw value or a phone digit run."""
        if any(self.in_compact(c) for c in compacts):
            return True
        for compact in compacts if self.digit_runs else ():
            digits = _digits_of(compact)
            if len(digits) >= _PHONE_MIN_DIGITS and any(run in digits for run in self.digit_runs):
                return True
        return False


def scanner_for(config: LeakScanFile, rules: Iterable[RuleFile]) -> LeakScanner:
    """The scanner of a loaded ruleset: its vocabulary plus what the rules enumerate.

    Event types and `values:` lists are vocabulary (`standard_with_ads` is a plan, not
    text); the rules' phone regions decide how the person's phone is hashed.
    """
    vocabulary: set[str] = set()
    regions: list[str] = []
    for rule in rules:
        regions.append(rule.identifiers.default_region)
        for event_type, spec in rule.events.items():
            vocabulary.add(event_type)
            for spec_field in spec.fields.values():
                if not isinstance(spec_field, str) and spec_field.values:
                    vocabulary.update(spec_field.values)
    return LeakScanner.from_config(config, vocabulary, regions or ["US"])
