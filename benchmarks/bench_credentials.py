"""Cost of injecting a credential into one request, per kind (p50/p99, microseconds).

What a request pays once the credential is warm: a file secret is checked with one ``stat`` per
use (and read again only when it changed), an environment secret costs nothing, and an OAuth 2.0
token is served from the cache until its refresh point. The token is fetched once, beforehand,
from the devkit token endpoint on loopback; only ``Injector.header`` is timed.

Run: ``.venv/bin/python benchmarks/bench_credentials.py [--calls N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.config.loader import LoadedConfig, revision_of
from gateway.config.model import GatewayConfig
from gateway.devkit.token_server import TokenServer
from gateway.forward.credentials import CredentialSet


def _config(token_url: str) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "version": 1,
            "gateway": {"id": "bench"},
            "empowerid": {"url": "https://tenant.example"},
            "credentials": {
                "file-header": {"header": {"name": "X-API-Key", "value": {"file": "key"}}},
                "env-bearer": {"bearer": {"token": {"env": "BENCH_TOKEN"}}},
                "file-basic": {"basic": {"username": "svc", "password": {"file": "key"}}},
                "oauth": {
                    "oauth2_client_credentials": {
                        "token_url": token_url,
                        "allowed_cidrs": ["127.0.0.1/32"],
                        "allow_special_addresses": True,
                        "client_id": "bench",
                        "client_secret": {"file": "key"},
                    }
                },
            },
            "targets": {},
        }
    )


async def _measure(calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work)
        (directory / "key").write_text("bench-secret\n")
        (directory / "key").chmod(0o600)
        async with TokenServer({"bench": "bench-secret"}) as idp:
            config = _config(idp.token_url)
            loaded = LoadedConfig(config, directory / "gateway.yaml", revision_of(config))
            credentials = CredentialSet.build(loaded, env={"BENCH_TOKEN": "bench-token"})
            results: dict[str, Any] = {}
            try:
                for name, injector in credentials.injectors.items():
                    await injector.header()  # warm: first read, first token
                    samples = []
                    for _ in range(calls):
                        started = time.perf_counter()
                        await injector.header()
                        samples.append((time.perf_counter() - started) * 1e6)
                    samples.sort()
                    results[name] = {
                        "p50_us": round(statistics.median(samples), 2),
                        "p99_us": round(samples[int(len(samples) * 0.99) - 1], 2),
                    }
                results["token_requests"] = idp.requests
            finally:
                await credentials.close()
    return results


def main() -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_measure(args.calls)), indent=2))


if __name__ == "__main__":
    main()
