"""`replay forwarded` on the partner topics a real guard run wrote (embedded broker): green on
the run as written, red after a vocabulary change flags yesterday's output, red with a planted
leak (which is also a record its rule could not produce, and a second output for one input)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from streams.broker.embedded import EmbeddedBroker
from tests.integration.kafka_helpers import ROOT, read_jsonl, read_topic, run_cli
from tests.integration.test_replay import _run_guard_once
from tests.report_dom import loading_attributes, sections

pytestmark = pytest.mark.integration
PARTNER_TOPIC = "partner.install-attribution.events"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBroker, Path]]:
    """A broker holding a real run's inputs, partner records and blocked records."""
    tmp = tmp_path_factory.mktemp("forwarded")
    with EmbeddedBroker.start(log_path=tmp / "tansu.log") as broker:
        _run_guard_once(broker, tmp, 600)
        yield broker, tmp


def _dom(page: Path, tmp: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:  # the page is still read by the HTML parser below
        return page.read_text()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
    ]
    dumped = subprocess.run(
        [chromium, *flags, f"--user-data-dir={tmp / 'chromium-forwarded'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return dumped.stdout


def _inputs_checked(stdout: str) -> int:
    match = re.search(r"conservation: ([\d,]+) input", stdout)
    assert match, stdout[-2000:]
    return int(match.group(1).replace(",", ""))


def test_green_then_a_vocabulary_change_then_a_planted_leak(written: tuple[EmbeddedBroker, Path]) -> None:
    broker, tmp = written
    # 1. green: every record as its rule produced it, nothing flagged, every input once per partner
    page, rows_file = tmp / "green.html", tmp / "green.jsonl"
    green = run_cli(broker, "replay", "forwarded", "--no-git", "--html", str(page), "--jsonl", str(rows_file))
    assert green.returncode == 0, green.stdout + green.stderr
    rows = read_jsonl(rows_file)
    forwarded = read_topic(broker.bootstrap, PARTNER_TOPIC)
    assert len([r for r in rows if r["partner"] == "install-attribution"]) == len(forwarded) > 0
    assert all(not r["leaks"] and r["projection"] is None and r["unverified"] is None for r in rows)
    assert {r["fields"]["event_id"] for r in rows} == {"pseudonym"}
    assert "every one of" in green.stdout and "missing 0, duplicated 0" in green.stdout
    inputs = _inputs_checked(green.stdout)
    sampled = run_cli(broker, "replay", "forwarded", "--no-git", "--sample-every", "7")
    assert sampled.returncode == 0, sampled.stdout + sampled.stderr
    sample = _inputs_checked(sampled.stdout)
    assert 0 < sample < inputs / 3 and "missing 0, duplicated 0, outputs naming no input 0" in sampled.stdout
    shown = sections(_dom(page, tmp))
    assert "What did each partner receive" in shown["questions"] and "Not answered" in shown["questions"]
    assert "event_hour (coarsened time" in shown["received"] and "ad_id (ad id" in shown["received"]
    assert "missing 0, duplicated 0, outputs naming no input 0" in shown["conservation"]
    assert 'id="received-line" class="verdict green"' in page.read_text()

    # 2. today's vocabulary names a campaign as a title: yesterday's records become findings
    today = tmp / "today-rules"
    shutil.copytree(ROOT / "rules", today, dirs_exist_ok=True)
    vocabulary = today / "_leak-scan.yaml"
    vocabulary.write_text(
        vocabulary.read_text().replace("  - Stranger Things\n", "  - Stranger Things\n  - Holiday\n")
    )
    flagged_file = tmp / "flagged.jsonl"
    flagged = run_cli(
        broker, "replay", "forwarded", "--no-git", "--rules", str(today), "--verify-rules", "rules",
        "--jsonl", str(flagged_file),
    )  # fmt: skip
    assert flagged.returncode == 1, flagged.stdout + flagged.stderr
    leaky = [r for r in read_jsonl(flagged_file) if r["leaks"]]
    assert leaky and all(r["projection"] is None for r in leaky)  # as the rule produced them, then
    assert all(any(f.startswith("campaign_id:") for f in r["leaks"]) for r in leaky)

    # 3. a planted record: a copy of a real one, with a URL where a campaign id goes
    key, value, headers = forwarded[0]
    planted = {**orjson.loads(value or b"{}"), "campaign_id": "https://evil.example/title/80057281"}
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(
        PARTNER_TOPIC, orjson.dumps(planted), key, headers=list[tuple[str, str | bytes | None]](headers)
    )
    producer.flush(30)
    page, red_rows = tmp / "red.html", tmp / "red.jsonl"
    red = run_cli(broker, "replay", "forwarded", "--no-git", "--html", str(page), "--jsonl", str(red_rows))
    assert red.returncode == 1, red.stdout + red.stderr
    bad = [r for r in read_jsonl(red_rows) if r["leaks"] or r["projection"]]
    assert len(bad) == 1 and any("campaign_id" in f for f in bad[0]["leaks"])
    assert "campaign_id" in bad[0]["projection"]
    assert "duplicated 1" in red.stdout
    text = page.read_text()
    assert "evil.example" not in text and not loading_attributes(text)  # values never shown
    shown = sections(_dom(page, tmp))
    assert 'id="received-line" class="verdict red"' in text
    assert "1 record carries a value today's leak scan flags" in shown["received"]
    assert "duplicated 1" in shown["conservation"]
    assert bad[0]["where"] in shown["received"]


VISIT_MEASURE = """partner: visit-measure
rule_id: visit-measure-v1
jurisdictions: [US, CA]
consent: {interest_based_ads: required, ad_cookies_on_web: not_required}
events:
  site_visit:
    fields:
      visit_id: {from: event_id, transform: pseudonym, required: true}
      country: {from: context.country, pattern: '[A-Z]{2}'}
      platform: {from: device.platform, values: [web]}
"""


def _would_forward(stdout: str) -> int:
    match = re.search(r"visit-measure\s*│\s*site_visit\s*│\s*([\d,]+)\s*│", stdout)
    assert match, stdout[-3000:]
    return int(match.group(1).replace(",", ""))


def test_whatif_decides_every_input_for_a_new_partner(written: tuple[EmbeddedBroker, Path]) -> None:
    broker, tmp = written
    proposed = tmp / "proposed-with-new-partner"
    shutil.copytree(ROOT / "rules", proposed, dirs_exist_ok=True)
    shutil.rmtree(proposed / "tests")
    (proposed / "visit-measure.yaml").write_text(VISIT_MEASURE)
    page = tmp / "whatif-new.html"
    every = run_cli(broker, "replay", "--no-git", "--rules", str(proposed), "--html", str(page))
    assert every.returncode == 0, every.stdout + every.stderr
    forwards = _would_forward(every.stdout)
    assert forwards > 0 and "visit_id" in every.stdout
    assert "changes no decision" not in every.stdout  # the old message, blind to new partners
    assert "from blocked records, with the state recorded there" in every.stdout
    shown = sections(_dom(page, tmp))
    assert f"would receive {forwards:,} input" in shown["whatif-new"]
    assert re.search(r"visit-measure site_visit [\d,]+ country, platform, visit_id", shown["whatif-new"])
    # Blocked records for signup-conversions only: site visits it received leave no blocked record
    # there, so they are read from the source topic, decided with today's state (unchanged since).
    some = run_cli(broker, "replay", "--no-git", "--rules", str(proposed), "--partner", "signup-conversions")
    assert some.returncode == 0, some.stdout + some.stderr
    assert re.search(r"[1-9][\d,]* input\(s\) from the source topics", some.stdout), some.stdout[-2000:]
    assert _would_forward(some.stdout) == forwards
    # today's rules name a partner that received nothing yet: no topic, nothing sent, not an error;
    # its inputs were decided under a ruleset without it, so conservation does not expect it
    today = run_cli(
        broker, "replay", "forwarded", "--no-git", "--rules", str(proposed), "--verify-rules", "rules"
    )
    assert (
        "visit-measure: 0 record(s) on partner.visit-measure.events (the topic does not exist" in today.stdout
    )
    assert "missing 0" in today.stdout, today.stdout[-2000:]


def test_one_page_answers_both_questions(written: tuple[EmbeddedBroker, Path]) -> None:
    broker, tmp = written
    page = tmp / "both.html"
    both = run_cli(broker, "replay", "--no-git", "--forwarded", "--html", str(page))
    planted = "duplicated 1" in both.stdout  # the planted record of the test above, when it ran first
    assert both.returncode == (1 if planted else 0), both.stdout + both.stderr
    shown = sections(page.read_text())
    assert shown["questions"].count("Answered") == 2 and "Not answered" in shown["questions"]  # not what-if
    assert "install-attribution" in shown["received"] and "conservation" in shown["received"].lower()
    assert "every decision reproduced" in shown["verdict"]
    text = page.read_text()
    assert text.index('id="received"') < text.index('id="verdict"')  # what partners received comes first
