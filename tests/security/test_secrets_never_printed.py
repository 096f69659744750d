"""No command prints a secret (ARCHITECTURE rule 6, for the terminal and CI logs as for logs).

``validate`` printed a proxy URL with its password because a configuration problem quotes the
value it is about. The class is every place a command shows text it did not write itself:
problems (``validate``, ``diff``, ``check``, ``explain``, ``policy-test``, ``run``'s log), error
messages built from other layers, the request ``explain`` is given, and the live ``/readyz``
answer ``status`` shows. Each is fed a credential here and must show it masked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.cli import main
from gateway.errors import MASK, GatewayError, Problem
from tests.unit.policy.conftest import SHIPPED_POLICIES, config_text

SECRET = "hunter2-Zq9"
URL_WITH_PASSWORD = f"http://bob:{SECRET}@proxy.corp.local:3128"


def gateway_yaml(directory: Path, proxy: str = "", listen: str = "127.0.0.1:9464") -> Path:
    path = directory / "gateway.yaml"
    extra = f'observability:\n  listen: "{listen}"\n{proxy}'
    path.write_text(config_text([SHIPPED_POLICIES], extra=extra), encoding="utf-8")
    path.chmod(0o600)
    return path


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    return out + err


@pytest.mark.parametrize("form", ["text", "json"])
def test_validate_never_prints_a_proxy_password_from_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    config = gateway_yaml(tmp_path, proxy=f"proxy:\n  url: {URL_WITH_PASSWORD}\n")
    assert main(["validate", "-c", str(config), "--format", form]) == 1
    text = printed(capsys)
    assert "proxy.url" in text
    assert SECRET not in text
    assert f"http://{MASK}@proxy.corp.local:3128" in text


def test_validate_never_prints_a_proxy_password_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_PROXY__URL", URL_WITH_PASSWORD)
    config = gateway_yaml(tmp_path)
    assert main(["validate", "-c", str(config)]) == 1
    text = printed(capsys)
    assert "GATEWAY_PROXY__URL" in text
    assert SECRET not in text


def test_a_shortened_value_is_masked_before_it_is_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Problems show at most 40 characters of a wrong value: cut first, the '@' that marks the
    # password would be gone and the password would be shown.
    long_secret = SECRET * 4
    config = gateway_yaml(tmp_path, proxy=f'proxy: "http://bob:{long_secret}@proxy:3128"\n')
    assert main(["validate", "-c", str(config)]) == 1
    text = printed(capsys)
    assert "expected a mapping" in text
    assert SECRET[:6] not in text


def test_diff_and_check_report_problems_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = gateway_yaml(tmp_path)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = gateway_yaml(bad_dir, proxy=f"proxy:\n  url: {URL_WITH_PASSWORD}\n")
    assert main(["diff", str(good), str(bad)]) == 1
    assert SECRET not in printed(capsys)
    assert main(["check", "-c", str(bad), "--timeout", "1"]) == 1
    text = printed(capsys)
    assert "proxy.url" in text
    assert SECRET not in text


def test_explain_never_prints_header_values_or_credential_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = gateway_yaml(tmp_path)
    for form in ("text", "json"):
        code = main(
            [
                "explain",
                "-c",
                str(config),
                "GET",
                "erp",
                f"/api/x?token={SECRET}&page=2",
                "-H",
                f"Authorization: Bearer {SECRET}",
                "-H",
                f"Cookie: sid={SECRET}",
                "--format",
                form,
            ]
        )
        assert code == 0
        text = printed(capsys)
        assert SECRET not in text
        assert "authorization" in text  # the name is shown (it is dropped: no operation names it)
        assert "page=2" in text
    # A header given without its colon is not echoed back either.
    assert main(["explain", "-c", str(config), "GET", "erp", "/api/x", "-H", SECRET]) == 2
    assert SECRET not in printed(capsys)


def test_error_messages_and_problems_are_masked() -> None:
    error = GatewayError(f"cannot reach {URL_WITH_PASSWORD}/x?sig={SECRET}")
    assert SECRET not in str(error)
    problem = Problem(f"{URL_WITH_PASSWORD!r} is wrong", code="x", hint=f"password={SECRET}")
    assert SECRET not in problem.render()
    assert SECRET not in json.dumps(problem.as_dict())


@pytest.fixture
async def readyz_with_a_secret() -> AsyncIterator[int]:
    """A live /readyz whose answer carries a credential (an error text from another layer)."""

    async def readyz(_: web.Request) -> web.Response:
        body = {
            "ready": False,
            "reasons": [f"relay refused wss://ns.example/$hc/x?sb-hc-token={SECRET}"],
            "heartbeat_error": f"proxy {URL_WITH_PASSWORD} answered 407",
        }
        return web.json_response(body, status=503)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_status_masks_what_the_live_agent_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], readyz_with_a_secret: int
) -> None:
    config = gateway_yaml(tmp_path, listen=f"127.0.0.1:{readyz_with_a_secret}")
    for form in ("text", "json"):
        code = await asyncio.to_thread(main, ["status", "-c", str(config), "--format", form])
        assert code == 1
        text = printed(capsys)
        assert "relay refused" in text
        assert SECRET not in text
