"""What a running ``gateway run`` without LDAP targets keeps out of its memory (issue 13).

The LDAP proxy (its BER codec, DN parser, session and the ASN.1 libraries they use, pyasn1 and
asn1crypto), the other verbs' work (policy testing, GitOps diff and replay), pydantic-settings
(only for ``GATEWAY_*`` overrides), argcomplete (only while a shell completes), aiohttp (only
for the features that still speak through it) and jsonschema (only to explain a refused
configuration) cost megabytes of resident memory for the life of
the process. A gateway whose configuration has no LDAP target (nor any of those features) must
not import them: this runs the real agent, serves a request and a stream through it, and reads
the modules it holds when it stops.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .gatewayrun import registered_run

pytestmark = pytest.mark.asyncio

# ``gateway run`` as the command line starts it, writing the names of its modules at exit.
LAUNCHER = (
    "import atexit, os, sys\n"
    "def report():\n"
    "    with open(os.environ['MODULES_FILE'], 'w', encoding='utf-8') as out:\n"
    "        out.write('\\n'.join(sorted(sys.modules)))\n"
    "atexit.register(report)\n"
    "from gateway.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)

# Modules a gateway without LDAP targets has no use for (prefixes).
NOT_NEEDED = (
    "pyasn1",
    "asn1crypto",
    "gateway.ldap.codec",
    "gateway.ldap.dn",
    "gateway.ldap.decide",
    "gateway.ldap.proxy",
    "gateway.ldap.session",
    "gateway.ldap.stream",
    "gateway.config.ldap_semantics",
    "gateway.policy.testing",
    "gateway.gitops.diff",
    "gateway.gitops.replay",
    "gateway.commands.explain",
    "gateway.commands.policy_test",
    # Environment overrides (none here) and shell completion: each only when used.
    "pydantic_settings",
    "dotenv",
    "argcomplete",
    # One process serving alone (workers: 1) supervises nothing.
    "gateway.supervisor",
    # The default replay store is this process's memory: no SQLite.
    "sqlite3",
    "gateway.auth.sqlitestore",
    # The signatures the SaaS sends are read, resolved and verified by the verifier's fast path
    # (cryptography and hashlib directly); the RFC 9421 package and its Structured Field parser
    # serve only shapes the fast path steps aside for.
    "http_message_signatures",
    "http_sf",
    # aiohttp (with the libraries only it uses) serves only features this gateway does not
    # configure: the OPA server engine, OAuth credentials, WebSocket operations, several workers
    # and ``gateway check``. The control-plane client and the health endpoint speak HTTP/1.1
    # themselves.
    "aiohttp",
    "aiosignal",
    "frozenlist",
    "gateway.outbound.sessions",
    "gateway.policy.opa",
    # A configuration that loads is decided by gateway.config.schema_predicate; jsonschema (with
    # the libraries only it uses) explains refusals.
    "jsonschema",
    "jsonschema_specifications",
    "referencing",
    "rpds",
    "attr",
    "attrs",
    # A misspelt verb's suggestion (difflib), shell completion (shlex) and one median of at
    # most nine clock offsets (statistics) are not worth a module each for the process's life.
    "difflib",
    "shlex",
    "statistics",
)


async def test_a_gateway_without_ldap_targets_never_imports_the_ldap_proxy(
    tmp_path: Path,
) -> None:
    modules_file = tmp_path / "modules.txt"
    # A request and a stream: what serving them imports counts too.
    async with (
        registered_run(
            tmp_path,
            "imports-gateway",
            env={"MODULES_FILE": str(modules_file)},
            program=("-c", LAUNCHER),
        ) as (stack, process),
        stack.saas() as saas,
    ):
        response, _ = await saas.request("GET", "erp", "/api/accounts/1")
        assert response.status == 200
        # A signed body (its Content-Digest verified), refused afterwards by the policy.
        denied, _ = await saas.request("POST", "erp", "/api/accounts/1", body=b'{"a": 1}')
        assert denied.status == 403
        socket = await saas.stream("directory")
        try:
            await socket.send_bytes(b"ping")
            await socket.receive()
        finally:
            await socket.close()
    assert process.returncode == 0, (tmp_path / "gateway.log").read_text(errors="replace")
    modules = modules_file.read_text(encoding="utf-8").split()
    # The report is real: the agent's own modules are in it.
    assert "gateway.pipeline" in modules
    assert "gateway.relay.listener" in modules
    loaded = [m for m in modules if m.startswith(NOT_NEEDED)]
    assert loaded == [], loaded
