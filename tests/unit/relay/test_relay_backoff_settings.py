"""Reconnect backoff policy, listener settings and the handler seam types."""

from __future__ import annotations

import dataclasses
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.hybridconnection.errors import BadRendezvousAddressError
from gateway.hybridconnection.framing import SocketKind
from gateway.relay.backoff import Backoff, BackoffPolicy, FailureKind
from gateway.relay.handlers import RejectStream
from gateway.relay.settings import ListenerSettings

POLICY = BackoffPolicy(base=1.0, cap=30.0, auth_retry_delay=60.0, not_found_retry_delay=300.0)


@given(
    seed=st.integers(0, 2**32),
    kinds=st.lists(st.sampled_from(list(FailureKind)), min_size=1, max_size=60),
)
def test_every_delay_stays_within_its_policy_bound(seed: int, kinds: list[FailureKind]) -> None:
    backoff = Backoff(POLICY, random.Random(seed))
    for kind in kinds:
        delay = backoff.next_delay(kind)
        if kind is FailureKind.NOT_FOUND:
            assert 150.0 <= delay <= 300.0
        elif kind in (FailureKind.UNAUTHORIZED, FailureKind.PROXY_AUTH):
            assert delay == 0.0 or 30.0 <= delay <= 60.0
        else:
            assert 0.0 <= delay <= 30.0


class _Ceiling(random.Random):
    """Always draws the top of the jitter window, exposing the window itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_exponential_window_doubles_then_caps() -> None:
    backoff = Backoff(POLICY, _Ceiling())
    windows = [backoff.next_delay(FailureKind.CLOSED) for _ in range(8)]
    assert windows == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    for _ in range(500):
        backoff.next_delay(FailureKind.ERROR)
    assert backoff.next_delay(FailureKind.PING_TIMEOUT) == 30.0


def test_full_jitter_spreads_a_fleet_across_the_window() -> None:
    # Catalogue item 128: 200 agents dropped at once must not reconnect in lockstep.
    first = [Backoff(POLICY, random.Random(i)).next_delay(FailureKind.CLOSED) for i in range(200)]
    fifth = []
    for i in range(200):
        backoff = Backoff(POLICY, random.Random(1000 + i))
        for _ in range(4):
            backoff.next_delay(FailureKind.CLOSED)
        fifth.append(backoff.next_delay(FailureKind.CLOSED))
    assert max(first) <= 1.0
    assert statistics.pstdev(first) > 0.2
    assert max(fifth) <= 16.0
    assert statistics.pstdev(fifth) > 3.0
    assert len({round(d, 3) for d in fifth}) > 190


def test_unauthorized_retries_once_at_once_then_slowly() -> None:
    backoff = Backoff(POLICY, random.Random(3))
    assert backoff.next_delay(FailureKind.UNAUTHORIZED) == 0.0
    assert backoff.next_delay(FailureKind.UNAUTHORIZED) >= 30.0
    assert backoff.next_delay(FailureKind.UNAUTHORIZED) >= 30.0
    backoff.reset()
    assert backoff.next_delay(FailureKind.UNAUTHORIZED) == 0.0


def test_not_found_is_always_slow() -> None:
    backoff = Backoff(POLICY, random.Random(4))
    assert all(backoff.next_delay(FailureKind.NOT_FOUND) >= 150.0 for _ in range(5))


def test_a_stable_connection_resets_the_schedule() -> None:
    backoff = Backoff(dataclasses.replace(POLICY, stable_after=10.0), random.Random(5))
    for _ in range(6):
        backoff.next_delay(FailureKind.ERROR)
    backoff.connected_for(3.0)
    assert backoff.failures == 6
    backoff.connected_for(10.0)
    assert backoff.failures == 0
    assert backoff.next_delay(FailureKind.ERROR) <= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0.0}, {"base": 5.0, "cap": 1.0}, {"auth_retry_delay": 0.0}, {"stable_after": -1}],
)
def test_bad_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"."):
        BackoffPolicy(**kwargs)


def test_settings_accept_a_namespace_host_and_trust_only_the_relay_domain() -> None:
    settings = ListenerSettings(endpoint="contoso.servicebus.windows.net", hc_path="hc-agent-1")
    assert settings.relay_endpoint.base == "wss://contoso.servicebus.windows.net"
    policy = settings.rendezvous_policy()
    ok = "wss://g1-prod.servicebus.windows.net:443/$hc/hc-agent-1?sb-hc-action=request&sb-hc-id=1"
    assert policy.check(ok) == ok
    with pytest.raises(BadRendezvousAddressError):
        policy.check("ws://127.0.0.1:9/$hc/hc-agent-1?sb-hc-action=request")


def test_settings_for_a_dev_endpoint_trust_exactly_that_endpoint() -> None:
    settings = ListenerSettings(
        endpoint="ws://127.0.0.1:8765", hc_path="hc", allow_insecure_dev_endpoint=True
    )
    policy = settings.rendezvous_policy()
    assert policy.check("ws://127.0.0.1:8765/$hc/hc?sb-hc-action=accept&sb-hc-id=1")
    for bad in (
        "ws://127.0.0.1:8766/$hc/hc?sb-hc-action=accept",
        "ws://localhost:8765/$hc/hc?sb-hc-action=accept",
        "ws://127.0.0.1:8765/$hc/other?sb-hc-action=accept",
    ):
        with pytest.raises(BadRendezvousAddressError):
            policy.check(bad)


@pytest.mark.parametrize(
    "overrides",
    [
        {"endpoint": "ws://127.0.0.1:1"},
        {"endpoint": "https://contoso.servicebus.windows.net"},
        {"hc_path": "/"},
        {"connections": 0},
        {"connections": 26},
        {"renew_at": 1.0},
        {"ping_timeout": 0.0},
        {"request_timeout": 60.0},
        {"early_rendezvous_after": 30.0},
        {"early_rendezvous_after": 0.0},
        {"max_request_body": 1024},
        {"max_concurrent_requests": 0},
        {"relay_domain": ".net"},
        {"relay_domain": "windows..net"},
        {"max_protocol_violations": -1},
        {"violation_window": 0.0},
    ],
)
def test_invalid_settings_are_rejected(overrides: dict[str, object]) -> None:
    values: dict[str, object] = {"endpoint": "ns.servicebus.windows.net", "hc_path": "hc"}
    values.update(overrides)
    with pytest.raises(ValueError, match=r"."):
        ListenerSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [200, 302, 399, 600])
def test_reject_status_must_be_an_error_status(status: int) -> None:
    with pytest.raises(ValueError, match="400-599"):
        RejectStream(status)


def test_violation_budget_reaches_both_socket_kinds() -> None:
    settings = ListenerSettings(
        endpoint="ns.servicebus.windows.net",
        hc_path="hc",
        max_request_body=1024 * 1024,
        max_protocol_violations=5,
        violation_window=2.5,
    )
    control = settings.channel_limits(SocketKind.CONTROL)
    rendezvous = settings.channel_limits(SocketKind.RENDEZVOUS)
    assert (control.max_violations, control.violation_window) == (5, 2.5)
    assert (rendezvous.max_violations, rendezvous.violation_window) == (5, 2.5)
    # Section 5.3: 64 KiB bodies on the control channel whatever the setting, ours on rendezvous.
    assert (control.max_body_size, rendezvous.max_body_size) == (64 * 1024, 1024 * 1024)


def test_expired_token_reconnects_at_once_then_backs_off() -> None:
    backoff = Backoff(POLICY, _Ceiling())
    # A healthy channel whose token ran out (1008): straight back with a fresh token.
    assert backoff.next_delay(FailureKind.TOKEN_EXPIRED) == 0.0
    # Expiring again without a stable connection in between: the normal schedule, not a loop.
    assert backoff.next_delay(FailureKind.TOKEN_EXPIRED) == 2.0
    assert backoff.next_delay(FailureKind.TOKEN_EXPIRED) == 4.0
    backoff.connected_for(POLICY.stable_after)
    assert backoff.next_delay(FailureKind.TOKEN_EXPIRED) == 0.0


def test_a_stable_connection_resets_the_schedule_after_ten_seconds() -> None:
    backoff = Backoff(POLICY, _Ceiling())
    for _ in range(5):
        backoff.next_delay(FailureKind.CLOSED)
    backoff.connected_for(9.0)
    assert backoff.next_delay(FailureKind.CLOSED) == 30.0
    backoff.connected_for(10.0)
    assert backoff.next_delay(FailureKind.CLOSED) == 1.0
