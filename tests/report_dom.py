"""Reading the replay report's HTML in tests: the text of each section, and anything that loads."""

from __future__ import annotations

import re
from html.parser import HTMLParser

VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
)


class _Sections(HTMLParser):
    """The text of every element that has an id (nested ids included in their parents)."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[str, str | None]] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID_ELEMENTS:
            self.open.append((tag, dict(attrs).get("id")))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """`<line/>`: opens nothing."""

    def handle_endtag(self, tag: str) -> None:
        if any(open_tag == tag for open_tag, _ in self.open):
            while self.open and self.open.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        for _, element_id in self.open:
            if element_id:
                self.text[element_id] = self.text.get(element_id, "") + " " + data


class _Links(HTMLParser):
    """Every attribute that could load something (src, href, xlink:href, srcset, style url())."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "action") or "url(" in (value or ""):
                self.found.append(f"{tag} {name}={value}")


def sections(page: str) -> dict[str, str]:
    """Element id -> its text, whitespace collapsed (punctuation kept next to the word before it)."""
    parser = _Sections()
    parser.feed(page)
    return {k: re.sub(r" ([,;:)])", r"\1", " ".join(v.split())) for k, v in parser.text.items()}


def loading_attributes(page: str) -> list[str]:
    """Every attribute on the page that could load something (should be none)."""
    parser = _Links()
    parser.feed(page)
    return parser.found
