"""Values from outside reach printed reports and logs as one line of printable text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.diagnostics import CheckResult, render_text
from gateway.errors import one_line
from gateway.gitops import replay
from gateway.gitops.replay import Change, Outcome, ReplayReport

# What a relayed request or a server's answer could hold to forge a line or hide text: LF, CR,
# NEL, the line separator, an ANSI escape and a right-to-left override.
FORGED = "GET /a\r\nok    relay  all good\x85\u2028\x1b[2J\u202e"


@given(st.text(max_size=60))
def test_one_line_is_printable_and_keeps_what_was(text: str) -> None:
    shown = one_line(text)
    assert shown.isprintable()
    assert shown.splitlines() in ([shown], [])
    if text.isprintable():
        assert shown == text


@given(st.text(max_size=20).filter(lambda text: "\\" not in text))
def test_one_line_escapes_are_unambiguous_per_character(text: str) -> None:
    # Each refused character becomes the escape that names its code point, so a reader can tell
    # what was there (and which character a look-alike was).
    shown = one_line(text).encode("ascii", "backslashreplace")
    assert shown.decode("unicode_escape") == text


def test_a_forged_check_detail_stays_on_its_line() -> None:
    text = render_text([CheckResult("targets", "fail", FORGED, hint=FORGED)])
    lines = text.splitlines()
    assert len(lines) == 3  # the check, its hint, the summary
    assert lines[0] == (
        "FAIL  targets     GET /a\\x0d\\x0aok    relay  all good\\x85\\u2028\\x1b[2J\\u202e"
    )
    assert all(line.isprintable() for line in lines)


def test_a_forged_request_in_a_replay_report_stays_on_its_line() -> None:
    before = Outcome(forwarded=True, result="allowed", reason="", operation="read")
    after = Outcome(forwarded=False, result="denied", reason="path_not_allowed", operation=None)
    change = Change("d-1\n", "12:00", FORGED, "erp", before, after)
    report = ReplayReport(records=1, replayed=1, newly_denied=[change], denied_count=1)
    report.denied_by_operation["read"] = 1
    text = replay.render_text(report, "candidate")
    assert all(line.isprintable() for line in text.splitlines())
    [example] = [line for line in text.splitlines() if "e.g." in line]
    assert "GET /a\\x0d\\x0aok    relay  all good" in example
    assert "d-1\\x0a]" in example
