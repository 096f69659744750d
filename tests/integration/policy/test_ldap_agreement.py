"""The embedded engine (a compiled rego-cpp bundle) and the OPA engine (the devkit OPA server on
127.0.0.1, which evaluates queries rather than a bundle) decide every LDAP case alike, strip and
hide alike: the two evaluation paths of rego-cpp differ (a rule the bundle evaluates can be
undefined as a query), so both are run on the whole table of tests/unit/ldap/test_decide.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.devkit.opa_server import OpaServer
from gateway.ldap.decide import LdapChain
from gateway.policy.loader import load_policies
from gateway.policy.opa import OpaEngine
from tests.unit.ldap.directory_config import embedded_chain, facts, load_directory, search
from tests.unit.ldap.test_decide import CASES

pytestmark = pytest.mark.asyncio


async def test_opa_and_embedded_agree_on_every_ldap_case(tmp_path: Path) -> None:
    loaded = load_directory(tmp_path)
    embedded = embedded_chain(loaded)
    async with OpaServer() as server:
        engine = OpaEngine(
            load_policies(loaded), url=server.url, timeout=2.0, mode="enforce", cache=None
        )
        await engine.start()
        try:
            assert engine.ready
            for case, case_facts, allowed, _ in [*CASES, ("search", facts(search()), True, "")]:
                mine = await embedded.decide(case_facts)
                # A chain per case: its verdict cache would answer a repeated case without OPA.
                theirs = await LdapChain(loaded.config, engine).decide(case_facts)
                assert theirs.allowed is mine.allowed is allowed, case
                assert theirs.reasons == mine.reasons, case
                assert theirs.operation == mine.operation, case
                assert theirs.strip_attributes == mine.strip_attributes, case
                assert theirs.hidden_subtrees == mine.hidden_subtrees, case
            assert server.decisions == len(CASES) + 1
        finally:
            await engine.close()
