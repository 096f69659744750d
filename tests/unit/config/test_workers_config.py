"""``workers`` and the listener budget: what ``validate``, ``check`` and ``run`` refuse.

Several worker processes each hold their own relay listeners, so they count against the relay's
25 listeners per Hybrid Connection together with every other gateway on it, and each keeps its
own memory, so per-process replay memory would let a replay through once per worker.
"""

from __future__ import annotations

import pytest

from gateway.config import load
from gateway.config.capacity import listeners_on_hc, worker_count
from tests.unit.config.conftest import BASE, WriteConfig
from tests.unit.config.test_loader import NO_ENV, only_problem

SHARED = (
    "logging:\n  audit_file: decisions.log\nsignatures:\n  replay_store:\n    kind: sqlite\n"
    "policy:\n"
)


def with_sections(text: str) -> str:
    return BASE.replace("policy:\n", text)


def test_one_worker_is_the_default(write_config: WriteConfig) -> None:
    config = load(write_config(BASE), env=NO_ENV).config
    assert config.workers == 1
    assert worker_count(config) == 1
    assert listeners_on_hc(config) == 2


def test_several_workers_with_a_shared_store_are_accepted(write_config: WriteConfig) -> None:
    config = load(write_config(with_sections("workers: 4\n" + SHARED)), env=NO_ENV).config
    assert worker_count(config) == 4
    assert listeners_on_hc(config) == 8


def test_several_workers_with_per_process_memory_are_refused(write_config: WriteConfig) -> None:
    text = with_sections("workers: 2\nlogging:\n  audit_file: decisions.log\npolicy:\n")
    problem = only_problem(write_config(text))
    assert (problem.code, problem.path) == ("replay_store_per_worker", "workers")
    assert "once per worker" in problem.message
    assert "sqlite" in problem.hint
    assert "redis" in problem.hint
    # auto may start several, whatever this machine has.
    problem = only_problem(write_config(text.replace("workers: 2", "workers: auto")))
    assert problem.code == "replay_store_per_worker"


def test_several_workers_need_a_decision_log_file(write_config: WriteConfig) -> None:
    text = with_sections("workers: 2\nsignatures:\n  replay_store:\n    kind: sqlite\npolicy:\n")
    problem = only_problem(write_config(text))
    assert (problem.code, problem.path) == ("audit_file_per_worker", "workers")


@pytest.mark.parametrize(
    ("settings", "total"),
    [
        ("workers: 13\n", 26),  # 13 x 2 connections
        ("workers: 5\nrelay:\n  connections: 5\n", 25),  # one more than 25 minus check's
    ],
)
def test_the_listener_budget_is_held_to_the_relay_limit(
    write_config: WriteConfig, settings: str, total: int
) -> None:
    problem = only_problem(write_config(with_sections(settings + SHARED)))
    assert problem.code == "listener_limit"
    assert f"= {total} listeners" in problem.message
    assert problem.path == "workers"


def test_a_budget_that_leaves_check_its_listener_is_accepted(write_config: WriteConfig) -> None:
    settings = "workers: 3\nrelay:\n  connections: 4\n  gateways: 2\n"
    config = load(write_config(with_sections(settings + SHARED)), env=NO_ENV).config
    assert listeners_on_hc(config) == 24


def test_the_budget_names_connections_when_workers_is_not_set(write_config: WriteConfig) -> None:
    settings = "relay:\n  connections: 5\n  gateways: 5\npolicy:\n"
    problem = only_problem(write_config(with_sections(settings)))
    assert (problem.code, problem.path) == ("listener_limit", "relay.connections")


def test_auto_is_one_per_cpu_within_the_listener_limit(write_config: WriteConfig) -> None:
    config = load(write_config(with_sections("workers: auto\n" + SHARED)), env=NO_ENV).config
    assert worker_count(config, cpus=4) == 4
    # 24 listeners left for 2 per worker: at most 12 workers, however many CPUs.
    assert worker_count(config, cpus=64) == 12
    three = "workers: auto\nrelay:\n  connections: 4\n  gateways: 3\n" + SHARED
    config = load(write_config(with_sections(three)), env=NO_ENV).config
    assert worker_count(config, cpus=8) == 2
    assert listeners_on_hc(config, cpus=8) == 24


@pytest.mark.parametrize("value", ["0", "25", "true", "'2'", "many"])
def test_workers_must_be_auto_or_a_small_number(write_config: WriteConfig, value: str) -> None:
    problem = only_problem(write_config(with_sections(f"workers: {value}\n" + SHARED)))
    assert problem.path == "workers"
