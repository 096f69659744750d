"""The real parts of a pipeline for tests that call :class:`gateway.pipeline.Pipeline` directly
(no relay sockets): a configuration with one ``erp`` target on a loopback port, the repository's
Rego policy, a key set with one signing key and a verifier with its replay memory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.auth import KeySet, ReplayCache, SignatureVerifier, VerifierSettings
from gateway.config import load
from gateway.devkit.signing import RequestSigner, generate_key, key_entry, keyset_document
from gateway.pipeline import Runtime
from gateway.policy.loader import build_engine

HC = "hc-agent-1"
NAMESPACE = "relay.test.invalid"
POLICIES = Path(__file__).resolve().parents[2] / "policies"


@dataclass
class PipelineParts:
    """What a test builds its :class:`Pipeline` from; close ``runtime`` when done."""

    runtime: Runtime
    verifier: SignatureVerifier
    signer: RequestSigner


async def pipeline_parts(
    directory: Path,
    port: int,
    operations: list[dict[str, Any]],
    limits: dict[str, Any] | None = None,
) -> PipelineParts:
    """Parts for target ``erp`` (http on 127.0.0.1:``port``) with ``operations``, signed by
    key ``k1``; ``limits``: gateway.yaml's ``limits`` section."""
    path = directory / "gateway.yaml"
    document: dict[str, Any] = {
        "version": 1,
        "gateway": {"id": "agent-1"},
        "empowerid": {"url": "https://tenant.example"},
        "policy": {"directories": [str(POLICIES)]},
        "targets": {
            "erp": {
                "scheme": "http",
                "host": "127.0.0.1",
                "port": port,
                "allow_special_addresses": True,
                "operations": operations,
            }
        },
    }
    if limits is not None:
        document["limits"] = limits
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    loaded = load(str(path))
    engine = build_engine(loaded)
    await engine.start()
    key = generate_key()
    now = time.time()
    keys = KeySet.from_document(
        keyset_document([key_entry("k1", key, not_before=now - 60, not_after=now + 3600)])
    )
    verifier = SignatureVerifier(
        keys,
        ReplayCache(max_entries=1000),
        gateway_id="agent-1",
        hc_path=HC,
        settings=VerifierSettings(max_age=60, max_skew=30),
    )
    signer = RequestSigner(key, keyid="k1", gateway_id="agent-1")
    return PipelineParts(Runtime.build(loaded, engine), verifier, signer)
