"""LDAP decisions through the real Rego policy and the embedded engine (gateway/ldap/decide.py).

Each case is an operation as the codec decodes it, decided by ``LdapChain.decide`` exactly as
the proxy will: the input is built by ``policy_input``, the rules are ``data.gateway.ldap`` from
the YAML above, the verdict is what ``policies/gateway/authz.rego`` says. The same table runs
against the OPA engine in tests/integration/policy/test_ldap_agreement.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from gateway.ldap.codec import Change, Control, Operation, Request
from gateway.ldap.decide import LdapChain, LdapFacts
from gateway.ldap.dn import MatchingRules
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.engine import POLICY_UNAVAILABLE
from tests.unit.ldap.directory_config import (
    BASE,
    CONFIG,
    EMPLOYEE,
    GROUP,
    PAGED,
    ROOT,
    bind,
    embedded_chain,
    facts,
    load_directory,
    modify,
    search,
    unreachable_opa,
)

pytestmark = pytest.mark.asyncio

SHOW_DELETED = "1.2.840.113556.1.4.417"
TREE_DELETE = "1.2.840.113556.1.4.805"
STARTTLS = "1.3.6.1.4.1.1466.20037"
WHOAMI = "1.3.6.1.4.1.4203.1.11.3"
PASSWORD_MODIFY = "1.3.6.1.4.1.4203.1.11.1"

# (case id, facts, allowed, the granting rule or reasons[0])
CASES: list[tuple[str, LdapFacts, bool, str | None]] = [
    # bind
    ("injected-bind", facts(bind("empowerid"), bound=None), True, "bind-service"),
    ("injected-bind-any-case", facts(bind("EmpowerID"), bound=None), True, "bind-service"),
    (
        "dn-bind",
        facts(bind("cn=READER, ou=service accounts,dc=corp,dc=example", b"pw"), bound=None),
        True,
        "bind-service",
    ),
    ("upn-bind", facts(bind("Reader@Corp.Example", b"pw"), bound=None), True, "bind-service"),
    (
        "bind-unknown-dn",
        facts(bind("CN=other,DC=corp,DC=example", b"pw"), bound=None),
        False,
        "ldap_identity_not_granted",
    ),
    (
        "bind-without-inner-tls",
        facts(bind("empowerid"), bound=None, inner_tls=False),
        False,
        "ldap_bind_needs_tls",
    ),
    ("anonymous-bind", facts(bind(""), bound=None), False, "ldap_anonymous_refused"),
    (
        "unauthenticated-bind",
        facts(bind("CN=reader,OU=Service Accounts,DC=corp,DC=example"), bound=None),
        False,
        "ldap_unauthenticated_bind",
    ),
    (
        "sasl-gssapi",
        facts(bind("", mechanism="GSSAPI"), bound=None),
        False,
        "ldap_sasl_mechanism_refused",
    ),
    (
        "bind-into-tier0",
        facts(bind("CN=admin,OU=Tier0,DC=corp,DC=example", b"pw"), bound=None),
        False,
        "ldap_never_reachable",
    ),
    (
        "bind-v2",
        facts(replace(bind("empowerid"), version=2), bound=None),
        False,
        "ldap_version_refused",
    ),
    # search
    ("inventory", facts(search()), True, "inventory"),
    ("inventory-paged", facts(search(controls=(Control(PAGED, True),))), True, "inventory"),
    (
        "inventory-sd-flags",
        facts(search(controls=(Control("1.2.840.113556.1.4.801", True),))),
        True,
        "inventory",
    ),
    (
        "show-deleted",
        facts(search(controls=(Control(SHOW_DELETED, True),))),
        False,
        "ldap_control_refused",
    ),
    (
        "non-critical-unknown-control",
        facts(search(controls=(Control(TREE_DELETE, False),))),
        False,
        "ldap_control_refused",
    ),
    ("all-attributes", facts(search(attributes=())), False, "ldap_attribute_not_granted"),
    ("star", facts(search(attributes=("*",))), False, "ldap_attribute_not_granted"),
    ("operational", facts(search(attributes=("cn", "+"))), False, "ldap_attribute_not_granted"),
    ("no-attributes", facts(search(attributes=("1.1",))), True, "inventory"),
    ("range-option", facts(search(attributes=("member;range=0-1499",))), True, "inventory"),
    ("oid-of-cn", facts(search(attributes=("2.5.4.3",))), True, "inventory"),
    (
        "laps-requested",
        facts(search(attributes=("cn", "ms-Mcs-AdmPwd"))),
        False,
        "ldap_attribute_never_returned",
    ),
    (
        "laps-in-filter",
        facts(search(filter="(&(objectClass=computer)(ms-Mcs-AdmPwd=a*))")),
        False,
        "ldap_filter_never_returned",
    ),
    (
        "unicodepwd-option",
        facts(search(attributes=("unicodePwd;binary",))),
        False,
        "ldap_attribute_never_returned",
    ),
    ("no-size-limit", facts(search(size_limit=0)), False, "ldap_size_limit_not_granted"),
    ("over-size-limit", facts(search(size_limit=1001)), False, "ldap_size_limit_not_granted"),
    (
        "search-tier0",
        facts(search("OU=Servers,OU=Tier0,DC=corp,DC=example")),
        False,
        "ldap_never_reachable",
    ),
    (
        "search-tier0-spelling",
        facts(search("ou = TIER0 ,dc=Corp,dc=example")),
        False,
        "ldap_never_reachable",
    ),
    ("search-outside", facts(search("DC=other,DC=example")), False, "ldap_subtree_not_granted"),
    (
        "search-suffix-trick",
        facts(search("DC=evilcorp,DC=example")),
        False,
        "ldap_subtree_not_granted",
    ),
    ("search-as-helpdesk", facts(search(), bound="helpdesk"), False, "ldap_identity_not_granted"),
    (
        "search-as-upn",
        facts(search(), bound="READER@corp.example", injected=False),
        True,
        "inventory",
    ),
    ("search-unbound", facts(search(), bound=None), False, "ldap_anonymous_refused"),
    # modify
    ("add-member", facts(modify(GROUP, ("add", "member"))), True, "group-membership"),
    (
        "replace-member",
        facts(modify(GROUP, ("replace", "member"))),
        False,
        "ldap_change_not_granted",
    ),
    (
        "member-and-acl",
        facts(modify(GROUP, ("add", "member"), ("replace", "nTSecurityDescriptor"))),
        False,
        "ldap_attribute_not_granted",
    ),
    (
        "domain-admins",
        facts(modify("CN=Domain Admins,CN=Users,DC=corp,DC=example", ("add", "member"))),
        False,
        "ldap_never_reachable",
    ),
    (
        "password-reset",
        facts(modify(EMPLOYEE, ("replace", "unicodePwd")), bound="helpdesk"),
        True,
        "password-reset",
    ),
    (
        "unlock",
        facts(modify(EMPLOYEE, ("replace", "lockoutTime")), bound="helpdesk"),
        True,
        "password-reset",
    ),
    (
        "reset-wrong-identity",
        facts(modify(EMPLOYEE, ("replace", "unicodePwd"))),
        False,
        "ldap_identity_not_granted",
    ),
    (
        "reset-outside",
        facts(
            modify("CN=x,OU=Contractors,DC=corp,DC=example", ("replace", "unicodePwd")),
            bound="helpdesk",
        ),
        False,
        "ldap_subtree_not_granted",
    ),
    # add, delete, modify DN, compare
    (
        "create-account",
        facts(
            Request(
                4,
                Operation.ADD,
                dn="CN=New,OU=New Hires,OU=Employees,DC=corp,DC=example",
                attributes=("objectClass", "cn", "sAMAccountName"),
            )
        ),
        True,
        "create-accounts",
    ),
    (
        "create-with-acl",
        facts(
            Request(
                4,
                Operation.ADD,
                dn="CN=New,OU=New Hires,OU=Employees,DC=corp,DC=example",
                attributes=("cn", "nTSecurityDescriptor"),
            )
        ),
        False,
        "ldap_attribute_not_granted",
    ),
    (
        "move-leaver",
        facts(
            Request(
                5,
                Operation.MODIFY_DN,
                dn=EMPLOYEE,
                new_rdn="CN=Ann Lee",
                new_superior="OU=Leavers,DC=corp,DC=example",
            )
        ),
        True,
        "move-leavers",
    ),
    (
        "move-to-tier0",
        facts(
            Request(
                5,
                Operation.MODIFY_DN,
                dn=EMPLOYEE,
                new_rdn="CN=Ann Lee",
                new_superior="OU=Tier0,DC=corp,DC=example",
            )
        ),
        False,
        "ldap_never_reachable",
    ),
    (
        "move-elsewhere",
        facts(
            Request(
                5,
                Operation.MODIFY_DN,
                dn=EMPLOYEE,
                new_rdn="CN=Ann Lee",
                new_superior="OU=Sales,DC=corp,DC=example",
            )
        ),
        False,
        "ldap_new_superior_not_granted",
    ),
    (
        "rename-in-place",
        facts(Request(5, Operation.MODIFY_DN, dn=EMPLOYEE, new_rdn="CN=Ann Smith")),
        False,
        "ldap_new_superior_not_granted",
    ),
    ("delete-employee", facts(Request(6, Operation.DELETE, dn=EMPLOYEE)), True, "move-leavers"),
    (
        "delete-group",
        facts(Request(6, Operation.DELETE, dn=GROUP)),
        False,
        "ldap_subtree_not_granted",
    ),
    (
        "no-rule-of-the-kind",
        facts(Request(6, Operation.ADD, dn=GROUP, attributes=("cn",))),
        False,
        "ldap_subtree_not_granted",
    ),
    (
        "compare-cn",
        facts(Request(7, Operation.COMPARE, dn=EMPLOYEE, attributes=("cn",))),
        True,
        "check-password",
    ),
    (
        "compare-userpassword",
        facts(Request(7, Operation.COMPARE, dn=EMPLOYEE, attributes=("userPassword",))),
        False,
        "ldap_attribute_never_returned",
    ),
    # extended
    ("whoami", facts(Request(8, Operation.EXTENDED, request_name=WHOAMI)), True, "whoami"),
    (
        "starttls",
        facts(Request(8, Operation.EXTENDED, request_name=STARTTLS)),
        False,
        "ldap_extended_refused",
    ),
    (
        "password-modify",
        facts(Request(8, Operation.EXTENDED, request_name=PASSWORD_MODIFY)),
        False,
        "ldap_extended_refused",
    ),
    # unbind and abandon only end things
    ("unbind", facts(Request(9, Operation.UNBIND)), True, None),
    ("abandon", facts(Request(9, Operation.ABANDON, abandon_id=1)), True, None),
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LdapChain:
    return embedded_chain(load_directory(tmp_path_factory.mktemp("directory")))


@pytest.mark.parametrize(
    ("facts_", "allowed", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_decision_table(
    chain: LdapChain, facts_: LdapFacts, allowed: bool, expected: str | None
) -> None:
    verdict = await chain.decide(facts_)
    assert verdict.allowed is allowed, verdict.reasons
    if allowed:
        assert verdict.operation == expected
        assert verdict.reasons == ()
    else:
        assert verdict.reasons[0] == expected, verdict.reasons
        assert verdict.operation is None
        assert verdict.strip_attributes == frozenset()


async def test_starttls_is_named_among_the_reasons(chain: LdapChain) -> None:
    verdict = await chain.decide(facts(Request(8, Operation.EXTENDED, request_name=STARTTLS)))
    assert "ldap_starttls_refused" in verdict.reasons


async def test_search_strips_never_returned_and_hides_protected_subtrees(
    chain: LdapChain,
) -> None:
    verdict = await chain.decide(facts(search()))
    assert verdict.allowed
    assert {"ms-mcs-admpwd", "unicodepwd", "mslaps-password"} <= verdict.strip_attributes
    assert verdict.strips("ms-Mcs-AdmPwd")
    assert verdict.strips("unicodePwd;binary")
    assert not verdict.strips("cn")
    assert verdict.hides("CN=dc1,OU=Servers,OU=Tier0,DC=corp,DC=example")
    assert verdict.hides("ou=tier0,dc=corp,dc=example")
    assert verdict.hides("CN=Domain Admins,CN=Users,DC=corp,DC=example")
    assert not verdict.hides("CN=Domain Users,CN=Users,DC=corp,DC=example")
    assert not verdict.hides("OU=Tier0-Lab,DC=corp,DC=example")
    assert not verdict.hides(EMPLOYEE)
    assert verdict.hides("not a dn")  # fail closed


async def test_one_level_search_hides_only_protected_children(chain: LdapChain) -> None:
    one = await chain.decide(facts(search(scope="one")))
    assert [list(path) for path in one.hidden_subtrees] == [
        ["0.9.2342.19200300.100.1.25=example", "0.9.2342.19200300.100.1.25=corp", "2.5.4.11=tier0"]
    ]
    base = await chain.decide(facts(search(scope="base")))
    assert base.hidden_subtrees == ()
    employees = await chain.decide(facts(search("OU=Employees," + BASE)))
    assert employees.allowed
    assert employees.hidden_subtrees == ()


async def test_other_operations_strip_nothing(chain: LdapChain) -> None:
    verdict = await chain.decide(facts(modify(GROUP, ("add", "member"))))
    assert verdict.allowed
    assert verdict.strip_attributes == frozenset()


async def test_a_dn_the_gateway_cannot_compare_is_a_deny_not_an_exception(
    chain: LdapChain,
) -> None:
    verdict = await chain.decide(facts(search("<GUID=0123456789abcdef0123456789abcdef>")))
    assert not verdict.allowed
    assert verdict.reasons == ("ldap_dn_extended_refused",)
    syntax = await chain.decide(facts(search("CN=a;b")))
    assert syntax.reasons == ("ldap_dn_syntax",)


async def test_the_policy_input_holds_no_secret(chain: LdapChain) -> None:
    verdict = await chain.decide(
        facts(
            bind("CN=reader,OU=Service Accounts,DC=corp,DC=example", b"hunter2-secret"), bound=None
        )
    )
    assert "hunter2" not in repr(verdict.document)
    assert verdict.document["ldap"]["bind"]["empty_credentials"] is False
    assert "message_id" not in verdict.document["ldap"]


async def test_unknown_target_is_denied(chain: LdapChain) -> None:
    for target in ("nowhere", "erp"):
        verdict = await chain.decide(facts(search(), target=target))
        assert verdict.reasons == ("unknown_target",)


async def test_equal_operations_share_a_cache_entry(chain: LdapChain) -> None:
    first = await chain.decide(facts(replace(search(), message_id=10)))
    second = await chain.decide(facts(replace(search(), message_id=11)))
    # A cache hit carries what the answer must not contain, like the first decision.
    assert second.strip_attributes == first.strip_attributes != frozenset()
    assert second.hidden_subtrees == first.hidden_subtrees != ()
    assert first.allowed
    assert second.allowed
    # The verdict cache in front of the engine answers the second (test_decide_cache.py).
    assert second == replace(first, latency=second.latency)
    assert chain.cache.hits >= 1


async def test_engine_fault_is_a_deny_saying_so(tmp_path: Path, refused_port: int) -> None:
    # An OPA engine whose server is not there: a real engine that cannot decide.
    loaded = load_directory(tmp_path)
    engine = unreachable_opa(loaded, refused_port)
    try:
        verdict = await LdapChain(loaded.config, engine).decide(facts(search()))
    finally:
        await engine.close()
    assert not verdict.allowed
    assert verdict.unavailable
    assert verdict.reasons == (POLICY_UNAVAILABLE,)


async def test_matching_rules_follow_the_target(tmp_path: Path) -> None:
    text = load_directory.__defaults__[0].replace(  # type: ignore[index]
        "    ldap:\n      bind_identities:",
        "    ldap:\n      case_insensitive_values: false\n      allow_extended_dn: true\n"
        "      bind_identities:",
    )
    loaded = load_directory(tmp_path, text)
    chain = LdapChain(loaded.config, None)  # type: ignore[arg-type]
    assert chain.matching("directory") == MatchingRules(case_insensitive=False, allow_extended=True)
    assert chain.matching("erp") == MatchingRules()


def _schema(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "schemas" / name).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


async def test_every_case_input_and_decision_matches_the_schemas(chain: LdapChain) -> None:
    inputs = _schema("policy-input.schema.json")
    decisions = _schema("policy-decision.schema.json")
    engine = chain.engine
    assert isinstance(engine, EmbeddedEngine)
    for _, case_facts, _, _ in CASES:
        document = chain.document(case_facts)
        inputs.validate(document)
        decisions.validate(engine.evaluate(document))


async def test_a_search_that_dereferences_aliases_hides_every_protected_subtree(
    chain: LdapChain,
) -> None:
    # RFC 4511 4.5.1.3: an alias under OU=Employees may lead into OU=Tier0; the entries it leads
    # to come back under their own DNs.
    employees = "OU=Employees," + BASE
    plain = await chain.decide(facts(search(employees)))
    assert plain.hidden_subtrees == ()
    for deref in (1, 2, 3):
        verdict = await chain.decide(facts(replace(search(employees), deref_aliases=deref)))
        assert verdict.allowed
        assert len(verdict.hidden_subtrees) == 2
        assert verdict.hides("CN=dc1,OU=Servers,OU=Tier0,DC=corp,DC=example")
        assert verdict.hides("CN=Domain Admins,CN=Users,DC=corp,DC=example")
        assert not verdict.hides(EMPLOYEE)


async def test_a_dereferencing_search_is_kept_to_its_rules_subtrees(chain: LdapChain) -> None:
    # RFC 4511 4.5.1.3: an alias can lead a search anywhere; the entries it leads to outside the
    # granting rule's subtrees are hidden, the rule's own entries are not.
    plain = await chain.decide(facts(search("OU=Managed Groups,DC=corp,DC=example")))
    assert plain.granted_subtrees is None
    assert not plain.hides("CN=x,DC=other,DC=example")
    request = replace(search("OU=Managed Groups,DC=corp,DC=example"), deref_aliases=3)
    verdict = await chain.decide(facts(request))
    assert (verdict.allowed, verdict.operation) == (True, "inventory")
    assert verdict.granted_subtrees is not None
    assert len(verdict.granted_subtrees) == 1
    assert verdict.hides("CN=x,DC=other,DC=example")
    assert verdict.hides("DC=example")
    assert not verdict.hides(GROUP)
    assert not verdict.hides("dc = CORP, dc=example")
    assert verdict.hides("OU=x,OU=Tier0,DC=corp,DC=example")  # never reachable, as before


async def test_an_allowed_operation_knows_what_its_answers_may_name(chain: LdapChain) -> None:
    # RFC 4511 4.1.10, 4.5.3: referrals and references name a server and a DN; only the target
    # itself within the granting rule's subtrees, never a never-reachable one, may pass.
    request = Request(1, Operation.MODIFY, dn=GROUP, changes=(Change("add", "member", 1),))
    verdict = await chain.decide(facts(request))
    assert (verdict.allowed, verdict.operation) == (True, "group-membership")
    reach = verdict.reach
    assert reach is not None
    assert reach.passes("ldaps://DC01.corp.example/CN=Other,OU=Managed%20Groups,DC=corp,DC=example")
    assert not reach.passes("ldaps://dc01.corp.example/OU=Employees,DC=corp,DC=example")
    assert not reach.passes("ldaps://dc02.corp.example/OU=Managed%20Groups,DC=corp,DC=example")
    assert reach.shows_matched("DC=corp,DC=example")  # a superior of the DN it named
    # The inventory rule covers the whole domain, but not the never-reachable subtrees.
    inventory = await chain.decide(facts(search(BASE)))
    assert inventory.reach is not None
    assert inventory.reach.passes("ldaps://dc01.corp.example/OU=Employees,DC=corp,DC=example")
    assert not inventory.reach.passes("ldaps://dc01.corp.example/CN=a,OU=Tier0,DC=corp,DC=example")
    assert not inventory.reach.shows_matched("OU=Tier0,DC=corp,DC=example")
    denied = await chain.decide(facts(replace(request, dn="OU=Tier0,DC=corp,DC=example")))
    assert not denied.allowed
    assert denied.reach is None


async def test_a_sort_key_is_judged_as_a_filter_attribute(tmp_path: Path) -> None:
    # RFC 2891: entries come back in the order of the sort key's values (and VLV seeks by
    # them), an oracle for a never-returned attribute just like a filter on it.
    text = CONFIG.replace(
        'controls: ["1.2.840.113556.1.4.801"]', 'controls: ["1.2.840.113556.1.4.473"]'
    )
    sorting = embedded_chain(load_directory(tmp_path, text))
    sort = (Control("1.2.840.113556.1.4.473", True),)
    by_name = replace(search(BASE), controls=sort, sort_keys=("cn",))
    assert (await sorting.decide(facts(by_name))).allowed
    by_secret = replace(by_name, sort_keys=("ms-Mcs-AdmPwd;binary",))
    verdict = await sorting.decide(facts(by_secret))
    assert (verdict.allowed, verdict.reasons) == (False, ("ldap_filter_never_returned",))
    assert verdict.document["ldap"]["filter"]["attributes"] == ["ms-mcs-admpwd", "objectclass"]


@pytest.fixture(scope="module")
def plain_chain(tmp_path_factory: pytest.TempPathFactory) -> LdapChain:
    """The directory with SASL PLAIN allowed."""
    text = CONFIG.replace(
        "      controls: [", "      sasl_mechanisms: [PLAIN, EXTERNAL]\n      controls: ["
    )
    assert text != CONFIG
    return embedded_chain(load_directory(tmp_path_factory.mktemp("plain"), text))


def _sasl(mechanism: str, credentials: bytes, name: str = "") -> Request:
    return Request(
        3,
        Operation.BIND,
        dn=name,
        version=3,
        auth_method="sasl",
        sasl_mechanism=mechanism,
        credentials=credentials,
    )


@pytest.mark.parametrize(
    ("request_", "allowed", "expected"),
    [
        # RFC 4616: [authzid] NUL authcid NUL passwd; the directory acts as the identity there.
        (_sasl("PLAIN", b"\0CN=x,OU=Tier0,DC=corp,DC=example\0pw"), False, "ldap_never_reachable"),
        (_sasl("PLAIN", b"\0someone\0pw", name="empowerid"), False, "ldap_identity_not_granted"),
        (_sasl("PLAIN", b"\0empowerid\0pw"), False, "ldap_identity_not_granted"),
        (_sasl("PLAIN", b"\0Reader@Corp.Example\0pw"), True, "bind-service"),
        (
            _sasl("PLAIN", b"dn:CN=reader,OU=Service Accounts,DC=corp,DC=example\0x\0pw"),
            True,
            "bind-service",
        ),
        (_sasl("PLAIN", b"no separators"), False, "ldap_sasl_credentials"),
        (_sasl("EXTERNAL", b"dn:CN=a,OU=Tier0,DC=corp,DC=example"), False, "ldap_never_reachable"),
        (_sasl("EXTERNAL", b""), True, None),  # the gateway's own certificate: granted by target
    ],
    ids=[
        "plain-tier0",
        "plain-named-identity",
        "plain-identity-name",
        "plain-upn",
        "plain-authzid-dn",
        "plain-unreadable",
        "external-tier0",
        "external-own",
    ],
)
async def test_a_sasl_bind_is_decided_by_the_identity_in_its_credentials(
    plain_chain: LdapChain, request_: Request, allowed: bool, expected: str | None
) -> None:
    verdict = await plain_chain.decide(facts(request_, bound=None))
    assert verdict.allowed is allowed, verdict.reasons
    assert (verdict.operation if allowed else verdict.reasons[0]) == expected


async def test_a_search_with_a_control_is_kept_to_its_rule_and_off_protected_subtrees(
    chain: LdapChain,
) -> None:
    # A listed control can decide which entries come back regardless of base and scope (AD's
    # attribute scoped query returns the entries a base object's attribute names, wherever they
    # live; show deleted, VLV, ...). The gateway does not read control values, so a search that
    # carries one is filtered as a dereferencing search is: all never-reachable subtrees hidden,
    # entries outside the rule's subtrees hidden. Paged results (RFC 2696) pages the scoped
    # results and changes nothing.
    sd_flags = Control("1.2.840.113556.1.4.801", True)  # listed in the directory's controls
    base = search(GROUP, scope="base")
    plain = await chain.decide(facts(replace(base, controls=(Control(PAGED, False),))))
    assert plain.allowed
    assert (plain.hidden_subtrees, plain.granted_subtrees) == ((), None)
    verdict = await chain.decide(facts(replace(base, controls=(sd_flags,))))
    assert verdict.allowed, verdict.reasons
    assert len(verdict.hidden_subtrees) == 2  # OU=Tier0 and CN=Domain Admins
    assert verdict.hides("CN=a,OU=Tier0,DC=corp,DC=example")
    assert verdict.hides("CN=x,DC=other,DC=example")
    assert not verdict.hides(GROUP)
