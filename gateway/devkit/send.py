"""``gateway dev send``: sign one request as EmpowerID would and send it through a relay.

For trying a gateway by hand (against ``gateway dev relay`` or a real namespace): the request is
signed with an RFC 9421 request-signing key (:class:`gateway.devkit.signing.RequestSigner`),
authorised at the relay with a SAS token made from a Send rule, and sent to
``/{hc}/{selector}{path}`` (docs/relay-contract.md). The answer is printed as status line,
headers and body; the exit code is 0 for a 1xx-3xx answer and 1 otherwise (or when nothing
could be sent). Never imported by production code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.devkit.saas import SaaSClient, SaaSResponse
from gateway.devkit.signing import PrivateKey, RequestSigner
from gateway.hybridconnection.sas import create_token, resource_uri

# Largest body ``--data`` may carry: the relay takes requests up to this size.
MAX_BODY = 64 << 20
SEND_TIMEOUT = 60.0


class SendError(Exception):
    """The request could not be prepared or sent (the message says why, without secrets)."""


@dataclass(frozen=True)
class SendRequest:
    """One request to send: where, as whom, and what."""

    relay: str
    namespace: str
    hc: str
    send_key_name: str
    send_key: str
    signing_key: PrivateKey
    keyid: str
    gateway_id: str
    method: str
    selector: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


def load_signing_key(path: Path) -> PrivateKey:
    """An unencrypted PEM Ed25519, ECDSA P-256 or RSA private key (what the gateway verifies;
    an RSA key signs with rsa-pss-sha512)."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SendError(f"cannot read the signing key {path}: {type(exc).__name__}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    raise SendError(f"{path} is neither an Ed25519, an ECDSA P-256 nor an RSA private key")


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` -> (``Name``, ``value``)."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or name != name.strip():
        raise SendError(f"a header must be written 'Name: value', got {text[:40]!r}")
    return name, value.strip()


def read_data(argument: str | None) -> bytes:
    """``--data``: ``@FILE`` reads the file, anything else is sent as UTF-8 text."""
    if argument is None:
        return b""
    if not argument.startswith("@"):
        data = argument.encode()
    else:
        try:
            with open(argument[1:], "rb") as handle:
                data = handle.read(MAX_BODY + 1)
        except OSError as exc:
            raise SendError(f"cannot read {argument[1:]}: {exc.strerror}") from None
    if len(data) > MAX_BODY:
        raise SendError(f"the body is larger than {MAX_BODY} bytes")
    return data


async def send(request: SendRequest) -> SaaSResponse:
    """Sign and send ``request``; raises :class:`SendError` when it cannot be sent."""
    relay = request.relay.rstrip("/")
    if not relay.startswith(("http://", "https://")):
        raise SendError("--relay must be an http:// or https:// URL")
    if not request.path.startswith("/"):
        raise SendError("PATH must start with '/'")
    try:
        token = create_token(
            resource_uri(request.namespace, request.hc), request.send_key_name, request.send_key
        )
    except ValueError as exc:  # names what is wrong with the rule, never the key itself
        raise SendError(str(exc)) from None
    signer = RequestSigner(request.signing_key, keyid=request.keyid, gateway_id=request.gateway_id)
    path, _, query = request.path.partition("?")
    client = SaaSClient(
        http_base=relay,
        ws_base="ws" + relay[len("http") :],
        namespace=request.namespace,
        hc=request.hc,
        send_token=token,
        signer=signer,
        timeout=SEND_TIMEOUT,
    )
    try:
        async with client:
            response, _ = await client.request(
                request.method,
                request.selector,
                path,
                query=query,
                headers=list(request.headers),
                body=request.body,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SendError(f"the relay could not be reached: {type(exc).__name__}") from None
    return response


def render(response: SaaSResponse, out: BinaryIO) -> None:
    """Write the status line, the headers and the body, as an HTTP message would show them."""
    lines = [f"HTTP {response.status}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    out.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
    out.write(response.body)
    out.flush()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gateway dev send``."""
    parser = subparsers.add_parser(
        "send",
        help="sign a request as EmpowerID would and send it through a relay",
        description="Send one signed request to a gateway through a relay and print the answer. "
        "For development: the keys given here are visible to other local users.",
    )
    parser.add_argument("--relay", required=True, metavar="URL", help="relay base URL")
    parser.add_argument("--namespace", required=True, metavar="HOST", help="relay namespace host")
    parser.add_argument("--hc", required=True, metavar="NAME", help="Hybrid Connection")
    parser.add_argument("--send-key-name", required=True, metavar="N", help="Send rule name")
    parser.add_argument("--send-key", required=True, metavar="K", help="Send rule key")
    parser.add_argument(
        "--signing-key", required=True, type=Path, metavar="FILE", help="PEM request-signing key"
    )
    parser.add_argument("--keyid", required=True, metavar="ID", help="keyid of the signing key")
    parser.add_argument("--gateway-id", required=True, metavar="ID", help="the gateway's id")
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        dest="headers",
        help="a request header (repeatable)",
    )
    parser.add_argument("--data", metavar="@FILE|TEXT", help="request body")
    parser.add_argument("method", metavar="METHOD", help="HTTP method (GET, POST, ...)")
    parser.add_argument("selector", metavar="SELECTOR", help="target name or host:port")
    parser.add_argument("path", metavar="PATH", help="on-prem path, with ?query if any")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: BinaryIO | None = None) -> int:
    """Send the request the arguments describe and print the answer."""
    try:
        request = SendRequest(
            relay=args.relay,
            namespace=args.namespace,
            hc=args.hc,
            send_key_name=args.send_key_name,
            send_key=args.send_key,
            signing_key=load_signing_key(args.signing_key),
            keyid=args.keyid,
            gateway_id=args.gateway_id,
            method=args.method,
            selector=args.selector,
            path=args.path,
            headers=tuple(parse_header(h) for h in args.headers),
            body=read_data(args.data),
        )
        response = asyncio.run(send(request))
    except SendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    render(response, out or sys.stdout.buffer)
    return 0 if response.status < 400 else 1
