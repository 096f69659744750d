"""The metrics, log events and alerts that docs/operations.md documents are the ones the code has.

Both directions: every documented metric is registered and every registered metric documented;
every documented event or alert code is emitted by the product code and every emitted one is
documented. Events are found in the source as ``extra={"event": "..."}`` and alert codes as the
first argument of an ``_alert``/``on_alert`` call, so a renamed or removed event fails here.
What each metric and event *means* is proved by behaviour tests (tests/integration/observability).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
OPERATIONS = ROOT / "docs" / "operations.md"
PRODUCT = ROOT / "gateway"
# The development kit (`gateway dev`, `gateway demo`) is not part of a production gateway.
NOT_PRODUCT = ("devkit",)
ALERT_CALLS = frozenset({"_alert", "_on_alert", "on_alert"})

# Events still waiting for a fix on another branch (strict: an emitted one turns red here).
PENDING_RELAY_EVENTS: frozenset[str] = frozenset()
# Files whose log lines do not all carry an event yet (same rule).
PENDING_RELAY_FILES: frozenset[str] = frozenset()


def _section(heading: str) -> str:
    """The text of the ``## heading`` or ``### heading`` section of docs/operations.md."""
    text = OPERATIONS.read_text(encoding="utf-8")
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert match is not None, f"docs/operations.md has no section {heading!r}"
    return match.group(1)


def _first_column(heading: str) -> list[str]:
    """The backticked names in the first column of the section's table."""
    names: list[str] = []
    for line in _section(heading).splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        names.extend(re.findall(r"`([^`]+)`", first))
    assert names, f"the table under {heading!r} is empty"
    return names


def _documented_metrics() -> list[str]:
    return _first_column("Metrics")


def _documented_events() -> list[str]:
    return _first_column("Log events")


def _documented_alerts() -> list[str]:
    return _first_column("Alerts")


def _registered_metrics() -> set[str]:
    """The sample names /metrics exposes (``*_total`` for counters), without the ``_created``,
    ``_bucket``, ``_count`` and ``_sum`` series that come with them."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        else:
            names.add(family.name)
    return names


def _product_sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PRODUCT.rglob("*.py")):
        if not any(part in NOT_PRODUCT for part in path.relative_to(PRODUCT).parts):
            yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _emitted() -> tuple[dict[str, str], dict[str, str]]:
    """Event names and alert codes found in the product code, each with where it is."""
    events: dict[str, str] = {}
    alerts: dict[str, str] = {}
    for path, tree in _product_sources():
        file = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "event"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        events.setdefault(value.value, f"{file}:{node.lineno}")
            elif isinstance(node, ast.Call) and node.args:
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                first = node.args[0]
                if (
                    name in ALERT_CALLS
                    and isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                ):
                    alerts.setdefault(first.value, f"{file}:{node.lineno}")
    return events, alerts


EVENTS, ALERTS = _emitted()


@pytest.mark.parametrize("name", _documented_metrics())
def test_documented_metric_is_registered(name: str) -> None:
    assert name in _registered_metrics(), f"{name} is documented but no metric has that name"


def test_every_registered_metric_is_documented() -> None:
    missing = _registered_metrics() - set(_documented_metrics())
    assert not missing, f"registered but not in the docs/operations.md metrics table: {missing}"


def _pending(name: str) -> object:
    if name in PENDING_RELAY_EVENTS:
        return pytest.param(
            name, marks=pytest.mark.xfail(strict=True, reason="fixed on branch relay")
        )
    return name


@pytest.mark.parametrize("name", [_pending(name) for name in _documented_events()])
def test_documented_event_is_emitted(name: str) -> None:
    assert name in EVENTS, f"the log event {name!r} is documented but nothing logs it"


def test_every_emitted_event_is_documented() -> None:
    missing = {name: where for name, where in EVENTS.items() if name not in _documented_events()}
    assert not missing, (
        f"logged with extra={{'event': ...}} but not in the docs/operations.md 'Log events' "
        f"table: {missing}"
    )


@pytest.mark.parametrize("code", _documented_alerts())
def test_documented_alert_is_raised(code: str) -> None:
    assert code in ALERTS, f"the alert {code!r} is documented but nothing raises it"


def test_every_alert_is_documented() -> None:
    missing = {code: where for code, where in ALERTS.items() if code not in _documented_alerts()}
    assert not missing, f"raised but not in the docs/operations.md 'Alerts' table: {missing}"


def _logging_files() -> list[object]:
    params: list[object] = []
    for path, tree in _product_sources():
        calls = [node for node in ast.walk(tree) if _is_log_call(node)]
        if not calls:
            continue
        name = str(path.relative_to(ROOT))
        marks = (
            [pytest.mark.xfail(strict=True, reason="fixed on branch relay")]
            if name in PENDING_RELAY_FILES
            else []
        )
        params.append(pytest.param(name, calls, id=name, marks=marks))
    return params


def _is_log_call(node: ast.AST) -> bool:
    """``log.info(...)`` and the like (module loggers are called ``log`` in this code base)."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"info", "warning", "error", "exception", "critical"}
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "log"
    )


def _names_an_event(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
            keys = keyword.value.keys
            return any(isinstance(key, ast.Constant) and key.value == "event" for key in keys)
    return False


@pytest.mark.parametrize(("name", "calls"), _logging_files())
def test_every_log_line_names_its_event(name: str, calls: list[ast.Call]) -> None:
    # Operators match on `event`, never on message text; a line without one cannot be alerted on.
    unnamed = [call.lineno for call in calls if not _names_an_event(call)]
    assert not unnamed, f"{name}: log lines without an event field at lines {unnamed}"


def test_the_scan_finds_what_it_looks_for() -> None:
    # Guards the scanner itself: events and alerts that certainly exist are found.
    assert "reload_failed" in EVENTS
    assert "alert" in EVENTS
    assert "certificate_renewal_failed" in ALERTS
    assert "hybrid_connection_not_found" in ALERTS
