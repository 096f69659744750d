"""Both sides against ``schemas/controlplane.openapi.yaml``: the client's requests and the
simulator's answers must match the published schemas (JSON Schema 2020-12, as OpenAPI 3.1 uses)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from gateway.devkit.controlplane import ControlPlaneSimulator
from gateway.identity import (
    RegistrationSettings,
    load_identity,
    mtls_client,
    register,
)
from gateway.identity.keys import build_csr, generate_private_key
from gateway.identity.models import AuditHead, Heartbeat, WorkerInstance
from gateway.identity.tls import mtls_context, registration_context

from .identity_support import PASSWORD, TEST_TIMEOUTS

SPEC_PATH = Path(__file__).resolve().parents[3] / "schemas" / "controlplane.openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
API = "api/gateway/v1/"


def _validate(name: str, document: object) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    Draft202012Validator(schema).validate(document)


def test_every_component_schema_is_valid_json_schema() -> None:
    assert SPEC["openapi"].startswith("3.1")
    for schema in SPEC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    operations = {(path, method) for path, item in SPEC["paths"].items() for method in item}
    assert operations == {
        ("/api/gateway/v1/registrations", "post"),
        ("/api/gateway/v1/relay-info", "get"),
        ("/api/gateway/v1/heartbeats", "post"),
        ("/api/gateway/v1/certificates", "post"),
        ("/api/gateway/v1/signing-keys", "get"),
        ("/api/gateway/v1/request-secrets", "get"),
    }


def test_schema_rejects_what_the_contract_forbids() -> None:
    with pytest.raises(Exception, match="does not match"):
        _validate("RegistrationRequest", {"gateway_id": "GW_1", "csr": "x", "version": "1"})
    with pytest.raises(Exception, match="Additional properties"):
        _validate(
            "Heartbeat",
            {
                "status": "online",
                "version": "1",
                "config_hash": "sha256:" + "0" * 64,
                "policy_revision": "r",
                "listeners_online": 1,
                "password": "x",
            },
        )


async def _raw(
    simulator: ControlPlaneSimulator,
    context: ssl.SSLContext,
    method: str,
    path: str,
    **kwargs: Any,
) -> tuple[int, str, Any]:
    timeout = aiohttp.ClientTimeout(total=TEST_TIMEOUTS.total)
    connector = aiohttp.TCPConnector(ssl=context)
    url = simulator.base_url + API + path
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.request(method, url, **kwargs) as response,
    ):
        return response.status, response.content_type, json.loads(await response.read())


async def test_client_requests_and_simulator_answers_follow_the_contract(
    simulator: ControlPlaneSimulator,
    make_settings: Callable[..., RegistrationSettings],
) -> None:
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    identity = load_identity(settings.state_dir)
    async with mtls_client(identity, timeouts=TEST_TIMEOUTS) as client:
        await client.heartbeat(
            Heartbeat(
                status="online",
                version="1",
                config_hash="sha256:" + "1" * 64,
                policy_revision="r1",
                listeners_online=1,
                counters={"requests_allowed": 1},
                audit_head=AuditHead(
                    seq=7,
                    hash="ab" * 32,
                    time="2026-12-07T06:00:00.000000Z",
                    alg="ecdsa-sha256",
                    key_id="0123456789abcdef",
                    signature="MEUCIQ==",
                ),
            )
        )
        await client.renew_certificate(build_csr(generate_private_key(), "gw-1"))
        # A worker's heartbeat (contract 1.1.0) names its worker.
        await client.heartbeat(
            Heartbeat(
                status="online",
                version="1",
                config_hash="sha256:" + "2" * 64,
                policy_revision="r1",
                listeners_online=2,
                worker=WorkerInstance(index=2, count=3),
            )
        )
    sent = {r.path.rsplit("/", 1)[-1]: json.loads(r.body) for r in simulator.requests if r.body}
    _validate("RegistrationRequest", sent["registrations"])
    _validate("CertificateRequest", sent["certificates"])
    beats = [json.loads(r.body) for r in simulator.requests if r.path.endswith("/heartbeats")]
    for beat in beats:
        _validate("Heartbeat", beat)
    # A one-process gateway sends what contract 1.0.0 describes; a worker says which it is.
    assert "worker" not in beats[0]
    assert beats[1]["worker"] == {"index": 2, "count": 3}

    plain = registration_context(simulator.ca.pem)
    mutual = mtls_context(identity.ca_pem, identity.cert_path, identity.key_path, None)
    body = {
        "gateway_id": "gw-2",
        "csr": build_csr(generate_private_key(), "gw-2").decode(),
        "version": "1",
    }
    answers = [
        (
            "RegistrationResponse",
            201,
            await _raw(
                simulator,
                plain,
                "POST",
                "registrations",
                json=body,
                headers={"Authorization": aiohttp.encode_basic_auth("alice", PASSWORD)},
            ),
        ),
        ("RelayInfo", 200, await _raw(simulator, mutual, "GET", "relay-info")),
        ("SigningKeySet", 200, await _raw(simulator, mutual, "GET", "signing-keys")),
        ("RequestSecretSet", 200, await _raw(simulator, mutual, "GET", "request-secrets")),
        (
            "HeartbeatAck",
            200,
            await _raw(simulator, mutual, "POST", "heartbeats", json=sent["heartbeats"]),
        ),
        (
            "HeartbeatAck",
            200,
            await _raw(simulator, mutual, "POST", "heartbeats", json=beats[1]),
        ),
        (
            "CertificateResponse",
            201,
            await _raw(simulator, mutual, "POST", "certificates", json=sent["certificates"]),
        ),
        (
            "MissingOperationProblem",
            403,
            await _raw(
                simulator,
                plain,
                "POST",
                "registrations",
                json=body,
                headers={"Authorization": aiohttp.encode_basic_auth("bob", "bobs-password")},
            ),
        ),
        ("Problem", 401, await _raw(simulator, plain, "POST", "registrations", json=body)),
        ("Problem", 401, await _raw(simulator, plain, "GET", "relay-info")),
        ("Problem", 401, await _raw(simulator, plain, "GET", "request-secrets")),
    ]
    for schema, expected_status, (status, content_type, document) in answers:
        assert status == expected_status, (schema, document)
        if schema.endswith("Problem"):
            assert content_type == "application/problem+json"
            assert document["status"] == status
        else:
            assert content_type == "application/json"
        _validate(schema, document)


# ``worker`` of a heartbeat, and whether the contract allows it. Index above count is the one rule
# JSON Schema cannot state (the schema says it in words); the model and the simulator enforce it.
WORKERS = [
    ({"index": 1, "count": 2}, True),
    ({"index": 2, "count": 2}, True),
    ({"index": 64, "count": 64}, True),
    ({"index": 0, "count": 2}, False),
    ({"index": 1, "count": 1}, False),
    ({"index": 65, "count": 65}, False),
    ({"index": 1}, False),
    ({"index": 1, "count": 2, "pid": 4242}, False),
]
HEARTBEAT = {
    "status": "online",
    "version": "1",
    "config_hash": "sha256:" + "3" * 64,
    "policy_revision": "r1",
    "listeners_online": 1,
}


@pytest.mark.parametrize(("worker", "allowed"), WORKERS)
async def test_worker_member_is_judged_alike_by_schema_client_and_simulator(
    simulator: ControlPlaneSimulator,
    make_settings: Callable[..., RegistrationSettings],
    worker: dict[str, int],
    allowed: bool,
) -> None:
    document = {**HEARTBEAT, "worker": worker}
    validator = Draft202012Validator(
        {"$ref": "#/components/schemas/Heartbeat", "components": SPEC["components"]}
    )
    assert validator.is_valid(document) is allowed
    # The client sends nothing the schema forbids: it refuses such a worker, or (a member the
    # contract does not have) leaves it out of what it sends.
    try:
        built: dict[str, int] | None = WorkerInstance(**worker).model_dump()
    except ValidationError:
        built = None
    if allowed:
        assert built == worker
    else:
        assert built is None or (
            built != worker and validator.is_valid({**document, "worker": built})
        )
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    identity = load_identity(settings.state_dir)
    mutual = mtls_context(identity.ca_pem, identity.cert_path, identity.key_path, None)
    status, _, answer = await _raw(simulator, mutual, "POST", "heartbeats", json=document)
    assert status == (200 if allowed else 400), answer
    _validate("HeartbeatAck" if allowed else "Problem", answer)
    assert [beat.worker for beat in simulator.heartbeats] == ([worker["index"]] if allowed else [])


@pytest.mark.parametrize(
    "worker", [{"index": 3, "count": 2}, {"index": True, "count": 2}, {"index": "1", "count": 2}]
)
async def test_worker_member_rules_beyond_types_are_enforced_by_client_and_simulator(
    simulator: ControlPlaneSimulator,
    make_settings: Callable[..., RegistrationSettings],
    worker: dict[str, object],
) -> None:
    if worker == {"index": 3, "count": 2}:
        with pytest.raises(ValidationError, match="cannot exceed"):
            WorkerInstance(index=3, count=2)
    else:
        with pytest.raises(Exception, match="is not of type 'integer'"):
            _validate("Heartbeat", {**HEARTBEAT, "worker": worker})
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    identity = load_identity(settings.state_dir)
    mutual = mtls_context(identity.ca_pem, identity.cert_path, identity.key_path, None)
    status, _, answer = await _raw(
        simulator, mutual, "POST", "heartbeats", json={**HEARTBEAT, "worker": worker}
    )
    assert status == 400
    _validate("Problem", answer)
    assert simulator.heartbeats == []


def test_the_contract_version_notes_the_worker_member() -> None:
    # An additive change to a request: the minor version moves and the change is written down.
    assert SPEC["info"]["version"] == "1.1.0"
    assert "1.1.0: `Heartbeat.worker` (optional)" in SPEC["info"]["description"]
    assert "worker" not in SPEC["components"]["schemas"]["Heartbeat"]["required"]
