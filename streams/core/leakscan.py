"""The second line of defense: scan every record about to be forwarded for forbidden content.

Default-deny projection should already have removed everything sensitive; the scan checks
keys and values at any depth, percent-decoded, for URLs (with or without scheme, app deep
links), title ids and names, free text shaped like search queries, watch-history shapes,
raw email/phone/IP, and the event's own raw identifiers and content values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from streams.core.rules.model import LeakScanFile

_URL = (
    r"[a-z][a-z0-9+.\-]{1,30}:/{1,3}[^\s]"  # scheme://… and app deep links (app://…)
    r"|\bwww\d?\."
    r"|\b[a-z0-9\-]{1,63}(?:\.[a-z0-9\-]{1,63})*\.[a-z]{2,24}\b"  # bare domains
    r"|(?:^|/)(?:watch|title|browse|search)/"
)
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_IPV4 = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b")
_IPV6_CANDIDATE = re.compile(r"[0-9a-f]*:[0-9a-f:.]*:[0-9a-f.]*")
# 7 to 15 digits with only separators between them, anywhere in the text
_PHONE = re.compile(r"\d(?:[\s().\-/_~+]*\d){6,14}")
# attribute shapes that are neither phone numbers nor free text: RFC 3339 times, UUIDs
# (ad ids), IPv4 addresses (already checked for truncation)
_KNOWN_SHAPE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:t\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z|[+\-]\d{2}:\d{2})?)?"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
)
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_SEPARATORS = re.compile(r"[\-_.+~]+")
_TOKEN_SPLIT = re.compile(r"[\s\-_.+~/]+")
_KEY_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_MAX_DECODE_ROUNDS = 4
_SUBSTRING_MIN = 6


def _decoded(text: str) -> str:
    """Lowercase and percent-decode until stable (double encoding included)."""
    out = text.lower()
    for _ in range(_MAX_DECODE_ROUNDS):
        if "%" not in out:
            break
        decoded = unquote(out)
        if decoded == out:
            break
        out = decoded.lower()
    return out


def _leaky_ip(text: str) -> bool:
    """True when the text holds an IP address that is not truncated to /24 or /48."""
    for match in _IPV4.finditer(text):
        octets = [int(g) for g in match.groups()]
        if all(o <= 255 for o in octets) and octets[3] != 0:
            return True
    if ":" in text:
        for candidate in _IPV6_CANDIDATE.findall(text):
            try:
                address = ipaddress.ip_address(candidate)
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv6Address):
                if address.ipv4_mapped is not None:
                    return address.ipv4_mapped.packed[3] != 0
                if int(address) & ((1 << 80) - 1):
                    return True
    return False


_CACHE_LIMIT = 100_000


class LeakScanner:
    """A compiled leak scan. Build it once per ruleset with `LeakScanner.from_config`.

    Findings for a text depend only on the text and the vocabulary, so they are memoized:
    stream values (countries, platforms, coarse times) repeat a lot.
    """

    def __init__(
        self,
        url: re.Pattern[str],
        title_ids: re.Pattern[str] | None,
        title_names: tuple[str, ...],
        forbidden_key_tokens: frozenset[str],
        max_words: int,
        max_tokens: int,
    ) -> None:
        self._url = url
        self._title_ids = title_ids
        self._title_names = title_names
        self._title_name_re = (
            re.compile("\\b(?:" + "|".join(map(re.escape, title_names)) + ")\\b") if title_names else None
        )
        self.forbidden_key_tokens = forbidden_key_tokens
        self.max_words = max_words
        self.max_tokens = max_tokens
        self._cache: dict[str, str | None] = {}

    @classmethod
    def from_config(cls, config: LeakScanFile) -> LeakScanner:
        """Compile the ruleset's vocabulary."""
        names = sorted({n.lower() for n in config.title_names if n.strip()}, key=len, reverse=True)
        return cls(
            url=re.compile(_URL),
            title_ids=re.compile("|".join(config.title_id_patterns)) if config.title_id_patterns else None,
            title_names=tuple(names),
            forbidden_key_tokens=frozenset(t.lower() for t in config.forbidden_key_tokens),
            max_words=config.max_words,
            max_tokens=config.max_tokens,
        )

    def _pattern_finding(self, lowered: str) -> str | None:
        """Findings that depend on the text alone (memoized)."""
        if _HEX_DIGEST.fullmatch(lowered):
            return None  # a SHA-256/HMAC output: nothing readable can hide in it
        if _KNOWN_SHAPE.fullmatch(lowered):  # a time, a UUID or an IPv4 address: nothing else fits
            return "ip" if _leaky_ip(lowered) else None
        if ("." in lowered or ":" in lowered or "/" in lowered) and self._url.search(lowered):
            return "url"
        if "@" in lowered and _EMAIL.search(lowered):
            return "email"
        has_digit = any(c.isdigit() for c in lowered)
        if has_digit and self._title_ids is not None and self._title_ids.search(lowered):
            return "title_id"
        if self._title_name_re is not None:
            spaced = _SEPARATORS.sub(" ", lowered)  # `stranger-things`, `stranger_things`
            if any(n in spaced for n in self._title_names) and self._title_name_re.search(spaced):
                return "title_name"
        if has_digit and ("." in lowered or ":" in lowered) and _leaky_ip(lowered):
            return "ip"
        if has_digit and _PHONE.search(lowered):
            return "phone"
        if len(lowered.split()) > self.max_words or len(_TOKEN_SPLIT.split(lowered)) > self.max_tokens:
            return "free_text"
        return None

    def _scan_text(self, text: str, raw_values: frozenset[str]) -> str | None:
        lowered = _decoded(text)
        try:
            finding = self._cache[lowered]
        except KeyError:
            finding = self._pattern_finding(lowered)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[lowered] = finding
        if finding is not None:
            return finding
        for raw in raw_values:
            if lowered == raw or (len(raw) >= _SUBSTRING_MIN and raw in lowered):
                return "raw_value"
        return None

    def key_finding(self, key: str, raw_values: frozenset[str] = frozenset()) -> str | None:
        """Why a key is forbidden: a content token (`page_url`) or a forbidden value shape."""
        tokens = _KEY_SPLIT.split(_CAMEL.sub("_", key).lower())
        if any(t in self.forbidden_key_tokens for t in tokens):
            return "forbidden_key"
        return self._scan_text(key, raw_values)

    def scan(self, record: dict[str, Any], raw_values: frozenset[str] = frozenset()) -> list[str]:
        """Findings as `path: kind`; an empty list means the record may leave.

        Top-level keys are the rule's output names, checked once when the rules load;
        keys below them (which projection never produces) are scanned here.
        """
        findings: list[str] = []
        for key, value in record.items():
            self._walk(value, str(key), raw_values, findings)
        return findings

    def _walk(self, value: Any, path: str, raw_values: frozenset[str], out: list[str]) -> None:
        if isinstance(value, str):
            finding = self._scan_text(value, raw_values)
            if finding:
                out.append(f"{path}: {finding}")
        elif isinstance(value, dict):
            out.append(f"{path}: nested_value")
            for key, item in value.items():
                child = f"{path}.{key}"
                finding = self.key_finding(str(key), raw_values)
                if finding:
                    out.append(f"{child}: key_{finding}")
                self._walk(item, child, raw_values, out)
        elif isinstance(value, list | tuple):
            out.append(f"{path}: nested_value")
            for index, item in enumerate(value):
                self._walk(item, f"{path}[{index}]", raw_values, out)
        elif isinstance(value, int | float) and not isinstance(value, bool) and str(value) in raw_values:
            out.append(f"{path}: raw_value")


def raw_values_of(strings: Iterable[str | None]) -> frozenset[str]:
    """Normalize an event's raw sensitive values for `LeakScanner.scan`."""
    return frozenset(s.strip().lower() for s in strings if s and s.strip())
