"""An independent check of partner topics for what the synthetic traffic must never leak.

Deliberately not the guard's own leak scan: it knows the generator's vocabulary (its raw
ids, emails, phones, IPs, URLs, titles and searches) and looks for any of them verbatim.
"""

from __future__ import annotations

import re

from streams.gen.traffic import SEARCHES, TITLES

LEAK_PATTERN = re.compile(
    "|".join(
        [
            r"acct-\d{7}",  # raw account ids
            r"prof-\d{7}",  # raw profile ids
            r"dev-[0-9a-f]{10}",  # raw device ids
            r"ev-\d{10}",  # raw event ids
            r"@",  # raw email
            r"650 555",  # raw phone
            r"\b203\.0\.\d{1,3}\.(?!0\b)\d{1,3}\b",  # untruncated IPv4
            r"https?:|example\.com|/title/",  # URLs
            *(re.escape(name) for _, name in TITLES),
            *(title_id for title_id, _ in TITLES),
            *(re.escape(query) for query in SEARCHES),
            r"watch_history|search_query|title_id|title_name|page_url|referrer",
        ]
    ),
    re.IGNORECASE,
)


def find_leaks(value: bytes | None) -> list[str]:
    """What in a partner record looks like something the generator marked sensitive."""
    return LEAK_PATTERN.findall((value or b"").decode("utf-8", "replace"))
