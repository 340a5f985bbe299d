"""Hostile requests at every front door (tests/hostile.py generates and judges them): whatever a client
sends, kaixu answers with complete JSON in the front door's error shape, a client's fault is a 4xx, the
process and its ledger keep working, and nothing but a real endpoint of a routed model, with kaixu's own
provider key, reaches the provider.

Bounded: hypothesis draws a fixed number of probes per test, derandomized and without an example
database, so every run (and CI) sends the same requests. Each test collects every broken rule over all its
probes and fails once with the whole list, grouped by rule: a to-do list rather than one shrunk example.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import hostile
from tests.fakes.provider import FakeProvider
from tests.harness import TEST_KEY, Kaixu, policy_for, wait_for

BUDGET_S = 120.0
"""Wall-clock cap of one test's probes, a safety net only: a hang ends the probes anyway (`run_probes`), and
the 600 probes of the longest test take about 5 s, a few times that on a machine busy with other tests."""


class Gateway:
    """The kaixu under fire, the fake behind it and the ledger file they write."""

    def __init__(self, kaixu: Kaixu, fake: FakeProvider, ledger: Path) -> None:
        self.kaixu, self.fake, self.ledger = kaixu, fake, ledger
        host, _, port = kaixu.url.removeprefix("http://").rpartition(":")
        self.host, self.port = host, int(port)
        self.hung = False
        """A probe of this run got no answer within hostile.ANSWER_TIMEOUT_S: the run's next probes are not sent
        (one hang costs 10 s, not one each), so how many are sent depends on kaixu, not on the machine's speed."""
        self.unsent = 0

    def send(self, probe: hostile.Probe) -> hostile.Answer | hostile.NoAnswer:
        return hostile.send(self.host, self.port, probe)

    def fire(self, probe: hostile.Probe) -> list[hostile.Finding]:
        """Send one probe; judge the answer and whatever reached the fake provider because of it."""
        if self.hung:
            self.unsent += 1
            return []
        before = len(self.fake.requests)
        answer = self.send(probe)
        self.hung = isinstance(answer, hostile.NoAnswer) and answer.kind == "hang"
        found = hostile.judge(probe, answer)
        for forwarded in self.fake.requests[before:]:
            found += hostile.judge_forwarded(forwarded.path, forwarded.headers, probe.describe())
            if probe.refused:
                found.append(hostile.Finding("forwarded a request kaixu must refuse", forwarded.path, probe.describe()))
        return found


@pytest.fixture(scope="module")
def gateway(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("fuzz")
    ledger = work / "ledger.db"
    policy = policy_for(fake.base_url, store={"sqlite": str(ledger)})
    policy["models"].update(hostile.GLOB_ROUTE)
    # short client timeouts, so a connection kaixu should close is closed well within a probe's 10 s
    policy["limits"].update({"client_header_timeout_s": 2, "client_body_timeout_s": 2, "client_idle_timeout_s": 2})
    kaixu = Kaixu(work, policy, args=("--access-log",)).start()
    yield Gateway(kaixu, fake, ledger)
    kaixu.stop()


def run_probes(gateway: Gateway, focus: str, examples: int) -> list[hostile.Finding]:
    """Draw ``examples`` probes with hypothesis and fire each; returns every finding (never raises inside).
    After a hang (a finding already, and hostile.ANSWER_TIMEOUT_S spent) the rest are drawn but not sent, so
    the count of probes sent does not depend on how fast the machine is, only on whether kaixu answers."""
    findings: list[hostile.Finding] = []
    deadline = time.monotonic() + BUDGET_S
    skipped = 0

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one(data: st.DataObject) -> None:
        nonlocal skipped
        probe = hostile.probe(hostile.HypothesisChooser(data), focus)
        if time.monotonic() > deadline:
            skipped += 1
            return
        findings.extend(gateway.fire(probe))

    gateway.hung, gateway.unsent = False, 0
    one()  # (its source seeds hypothesis's derandomized draws: edited, it would draw other probes)
    if gateway.unsent:
        findings.append(hostile.Finding("budget", f"{gateway.unsent} probes not sent: kaixu hung on one", focus))
    if skipped:
        findings.append(hostile.Finding("budget", f"{skipped} probes not sent: {BUDGET_S:g} s spent", focus))
    return findings


def assert_clean(gateway: Gateway, findings: list[hostile.Finding]) -> None:
    """No finding, and kaixu still up: a crash would otherwise show only as a wall of 'refused'."""
    health = httpx.get(gateway.kaixu.url + "/health", timeout=10)
    assert health.status_code == 200, f"kaixu is down after the probes:\n{gateway.kaixu.log()[-3000:]}"
    assert not findings, f"{len(findings)} broken rules:\n{hostile.summarize(findings)}"


def test_hostile_bodies_at_every_door(gateway: Gateway) -> None:
    assert_clean(gateway, run_probes(gateway, "body", 600))


def test_hostile_headers_at_every_door(gateway: Gateway) -> None:
    assert_clean(gateway, run_probes(gateway, "headers", 400))


def test_hostile_paths_and_methods(gateway: Gateway) -> None:
    assert_clean(gateway, run_probes(gateway, "target", 400))


def test_broken_http_framing_at_every_door(gateway: Gateway) -> None:
    """Request-line versions, bare CRs in header fields, HEAD: refused with a 400 where the HTTP is broken, and
    whatever is answered says `connection: close` when asked, then closes with nothing after the answer (an
    answer to HEAD is its head only)."""
    assert_clean(gateway, run_probes(gateway, "wire", 300))


def test_output_limits_that_are_not_positive_are_refused_at_every_chat_door(gateway: Gateway) -> None:
    """`max_tokens: -1`, `n: 0`, `maxOutputTokens: "50"`... with whatever else the generator adds (keys, names,
    headers): kaixu answers a 4xx itself and forwards nothing (issue 18: same-format requests went through, and
    llama.cpp and Ollama read -1 as no limit)."""
    assert_clean(gateway, run_probes(gateway, "limits", 150))


def test_broken_http_is_answered_or_closed_cleanly(gateway: Gateway) -> None:
    """Request lines and header blocks no generator assembles, and a body that never arrives in full. A
    server may close on bytes that are not HTTP at all (TLS, HTTP/2 preface), but it must not hold any of
    these connections open, and whatever it answers must follow the rules. Sent at once: a hang costs one
    timeout, not one per probe."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    short_body = hostile.Probe(
        "POST", "/v1/chat/completions",
        [("Host", "x"), ("Authorization", f"Bearer {TEST_KEY}"), ("Content-Length", str(len(body) + 100))],
        body, ["header:long-content-length"], malformed=True,
    )  # fmt: skip
    probes = [*hostile.raw_probes(), short_body]
    before = len(gateway.fake.requests)
    with ThreadPoolExecutor(len(probes)) as pool:
        answers = list(pool.map(gateway.send, probes))
    findings = []
    for probe, answer in zip(probes, answers, strict=True):
        findings += hostile.judge(probe, answer)
    for forwarded in gateway.fake.requests[before:]:
        findings += hostile.judge_forwarded(forwarded.path, forwarded.headers, "one of the broken requests")
    assert_clean(gateway, findings)


def test_text_no_utf8_can_hold_at_every_chat_door(gateway: Gateway) -> None:
    """Lone surrogates (valid JSON escapes) in the prompt of every chat door, streamed or not, on each provider
    format (`hostile.text_probes`): the fake echoes them back, and every answer must still follow the rules,
    its stream valid UTF-8 and whole (the traceback rule below catches what an answer cannot show)."""
    findings = []
    for probe in hostile.text_probes():
        findings += gateway.fire(probe)
    assert_clean(gateway, findings)


def test_a_gzip_body_is_limited_after_inflating(gateway: Gateway) -> None:
    """The body limit (1 MB in this policy) is about what kaixu holds in memory, so it counts inflated bytes:
    20 KB of gzip that inflate to 20 MB is a 413 once the caller is known; before that, nothing is inflated
    and an unknown caller gets its 401."""
    padding = "x" * 20_000_000
    inflated = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": padding}]}).encode()
    bomb = gzip.compress(inflated, compresslevel=9, mtime=0)
    assert len(bomb) < 100_000
    findings = []
    for auth in ([], [("Authorization", f"Bearer {TEST_KEY}")]):
        headers = [("Host", "x"), *auth, ("Content-Encoding", "gzip"), ("Content-Type", "application/json")]
        headers += [("Content-Length", str(len(bomb))), ("Connection", "close")]
        probe = hostile.Probe("POST", "/v1/chat/completions", headers, bomb, ["body:gzip-20MB"], malformed=True)
        answer = gateway.send(probe)
        findings += hostile.judge(probe, answer)
        expected = 413 if auth else 401
        if isinstance(answer, hostile.Answer) and answer.status != expected:
            findings.append(
                hostile.Finding(f"inflated body over the limit is not a {expected}", f"HTTP {answer.status}: "
                                f"{answer.body[:200]!r}", probe.describe())
            )  # fmt: skip
    assert_clean(gateway, findings)


def test_the_ledger_still_records_after_the_probes(gateway: Gateway) -> None:
    """Runs last: one good request after everything above, and its row must reach the sqlite file."""
    request_id = f"fuzz-final-{uuid.uuid4()}"
    response = httpx.post(
        gateway.kaixu.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still there?"}]},
        headers={"authorization": f"Bearer {TEST_KEY}", "x-request-id": request_id},
        timeout=10,
    )
    assert response.status_code == 200, response.text

    def recorded() -> bool:
        if not gateway.ledger.exists():
            return False
        with sqlite3.connect(gateway.ledger) as db:
            return db.execute("SELECT count(*) FROM requests WHERE request_id = ?", (request_id,)).fetchone()[0] > 0

    try:
        wait_for(recorded, 10, "the final request's ledger row")
    except TimeoutError:
        store = gateway.kaixu.health()["store"]
        errors = [line for line in gateway.kaixu.log().splitlines() if "kaixu.ledger" in line]
        raise AssertionError(f"the ledger stopped recording: store {store}; first errors: {errors[:3]}") from None


def test_no_ledger_row_holds_a_control_character(gateway: Gateway) -> None:
    """Attribution headers with control characters were among the probes (`header:attribution-control`):
    each is refused, so none reaches the ledger, raw or in its `attributes` JSON."""
    findings = hostile.ledger_findings(gateway.ledger)
    assert not findings, f"{len(findings)} ledger values:\n{hostile.summarize(findings)}"


def test_client_text_cannot_forge_log_lines(gateway: Gateway) -> None:
    """Model names with a newline were among the probes (hostile.HOSTILE_NAMES): each must stay inside its own
    log line, escaped, or an attacker writes whole lines of the operator's log."""
    forged = [line for line in gateway.kaixu.log().splitlines() if line.lstrip().startswith("X-Injected")]
    assert not forged, f"{len(forged)} log lines begin with text a client sent, e.g. {forged[:3]}"


def test_kaixu_logged_no_traceback(gateway: Gateway) -> None:
    """Runs last: whatever the probes made kaixu do, none of it was an exception its code did not expect. A
    failure it handles is a line in the log; a traceback is one nobody handled on purpose (a lone surrogate
    echoed into a translated stream was one: the answer looked right, with a hole in it)."""
    log = gateway.kaixu.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 300 :][:3000]
