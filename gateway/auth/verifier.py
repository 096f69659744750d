"""Verification of the SaaS's RFC 9421 HTTP Message Signature on every relayed request.

A relayed request (or WebSocket connect) is authentic only if it carries a signature that

* is selected by the application tag (``tag`` parameter, RFC 9421 section 2.3) so that a signature
  the same key made for another purpose is never accepted here;
* covers ``@method``, ``@authority``, ``@path``, ``@query`` and ``x-gateway-id`` (the id of this
  gateway, so a request meant for another gateway is refused), plus ``content-digest``
  (RFC 9530) whenever the request has a body;
* names a ``keyid`` of the pinned key set that is inside its validity window, with an ``alg``
  (if given) that matches the key;
* has ``created`` no older than ``max_age`` and not in the future, and an ``expires`` (if given)
  not in the past, each with ``max_skew`` tolerance;
* carries a ``nonce`` this gateway has not accepted before (the replay cache);
* verifies cryptographically, and whose Content-Digest matches the body bytes (SHA-256 or SHA-512);
* whose every covered header field arrives on exactly one field line (a target may act on one
  line of several while the signature covered them joined).

Order of work: cheap syntactic and size checks first (header counts and sizes, Structured Field
syntax, component ids, parameters), then key lookup and time checks, then one signature
verification, then the digest over the body, then the replay cache. Garbage is refused before any
cryptography runs, and only authentic signatures can add nonces to the replay cache or samples to
the clock-skew estimate.

The ``http-message-signatures`` package is the reference for the RFC 9421 semantics: its component
resolver (derived components and header fields, with its URL and method validation), its algorithm
classes and its Content-Digest check decide every request the fast paths below step aside for. Four
pieces are ours, each because the package cannot do the job: (1) the structural pre-checks, because
the package parses and resolves while it verifies and reports every problem as the same exception
with a free-text message, whereas the gateway needs a stable reason code per failure and needs the
checks done before cryptography; (2) the time checks, because the package reads the wall clock
itself (no clock can be injected) and cannot tell "expired" from "clock skew"; (3) selecting the
algorithm per key, because a package verifier is bound to one algorithm while the pinned set mixes
Ed25519, P-256, RSA-PSS and HMAC; (4) assembling the signature base (RFC 9421 section 2.5) from the
component values, because the package's ``verify()`` parses both signature fields, builds a
resolver and re-serialises every component identifier a second time after our checks have already
done so: that repeated work cost more than the cryptography itself on every relayed request. The
base is built with the same rules as the package's (one line per covered component, no CR/LF in
values, printable field values, trimmed printable derived values, ASCII only, then the
``@signature-params`` line serialised from the parsed member per RFC 8941), so what verifies here
is exactly what the package would verify.

The headers are read in one pass (sizes, and each field's lines by lower-cased name, from which
the signature fields, the covered fields' line counts and their values are taken), and each pinned
key's verification is prepared once per key set. Fast paths remove the rest of the overhead
around the cryptographic check, each for the exact shape the SaaS sends and each falling back to
the package for anything else, so they never decide on their own what is valid: (1) a
``Signature-Input`` or ``Signature`` value of one member in canonical RFC 8941 form (no optional
whitespace, String and Integer parameters, no escapes, padded Base64) is split by anchored
patterns instead of the general parser, and such a ``Signature-Input`` member is already the
``@signature-params`` value; (2) when every covered component is a parameterless ``@method``,
``@authority``, ``@path``, ``@query`` or header field, the request target is already in the
RFC 3986 grammar the package's resolver demands, and no covered line holds an obsolete fold, the
component values are read directly instead of through a resolver that normalises every header of
the request; (3) the signature is checked directly: Ed25519 (section 3.3.6) by libsodium through
PyNaCl, which refuses everything OpenSSL refuses and also small-order and non-canonical points
(``tests/unit/auth/test_auth_ed25519.py`` lists each case), at about half OpenSSL's CPU; ECDSA
P-256 by ``cryptography`` with the ``r || s`` signature of section 3.3.4; RSASSA-PSS with SHA-512
(section 3.3.1) by ``cryptography`` with MGF1-SHA-512 and exactly a 64-byte salt, after checking
that the signature is exactly as long as the modulus (RFC 8017 section 8.1.2 step 1: OpenSSL
itself takes a signature whose leading zero octets were dropped, so this is the one RSA case the
package accepts and the gateway refuses; no signer produces it); HMAC-SHA256 (section 3.3.3) by
the standard library, compared in constant time; (4) a Content-Digest of one
canonical SHA-256 or SHA-512 member (RFC 9530) is compared with ``hashlib``'s digest of the
body; (5) once a request has verified, the shape of its ``Signature-Input`` (label, covered
components, parameter names in order: everything but the values) is kept, at most eight shapes,
and the next request of that shape is read by one pattern over the field, its covered fields
picked out in the one pass over the headers and its base filled into a template, because
parsing, checking and serialising the same shape again cost as much as the rest of the
verification. A shape is learnt only from an authentic request, so a sender without a pinned key
cannot fill or flush them; and it only ever answers for a request that passes every check the
general reading applies, stepping aside (to that reading) before any cryptography otherwise. A
gateway serving the SaaS's requests therefore never imports the package (its memory is kept for
the general path). ``tests/unit/auth/test_auth_fast_path.py`` checks, for fuzzed inputs,
that the fast paths give what the package gives and that a verifier using them accepts and
refuses exactly what one using only the package does (``SignatureVerifier(..., reference=True)``),
on a verifier that has or has not learnt the request's shape, with two deliberate exceptions,
both refused here and accepted by the package's OpenSSL check, and neither made by an honest
signer: an Ed25519 signature whose R is a small-order point, and an RSA-PSS signature shorter
than the modulus (``tests/unit/auth/test_auth_rsa.py``).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.auth.errors import Reason, SignatureError
from gateway.auth.keys import (
    KEYID_PATTERN,
    MAX_RSA_BITS,
    Algorithm,
    KeySet,
    PinnedKey,
    SharedSecret,
)
from gateway.auth.replay import Admission, ReplayCache, ReplayStore
from gateway.auth.skew import ClockSkewEstimate, SkewEstimator

if TYPE_CHECKING:
    from http_message_signatures import HTTPSignatureComponentResolver

GATEWAY_ID_HEADER: Final = "x-gateway-id"
"""The request header naming the gateway a request is meant for (covered by the signature)."""

DEFAULT_TAG: Final = "gateway-request"
"""The ``tag`` signature parameter that marks a signature as a relayed-request authorisation."""

REQUIRED_COMPONENTS: Final = ("@method", "@authority", "@path", "@query", GATEWAY_ID_HEADER)
DIGEST_COMPONENT: Final = "content-digest"

# Derived components a request signature may cover (RFC 9421 section 2.2) and the parameters each
# may carry. "@status" belongs to responses; "req" and "tr" parameters are not meaningful here.
_DERIVED_PARAMS: Final[dict[str, frozenset[str]]] = {
    "@method": frozenset(),
    "@authority": frozenset(),
    "@path": frozenset(),
    "@query": frozenset(),
    "@target-uri": frozenset(),
    "@scheme": frozenset(),
    "@request-target": frozenset(),
    "@query-param": frozenset({"name"}),
}
_FIELD_PARAMS: Final = frozenset({"sf", "key", "bs"})
_SIGNATURE_PARAMS: Final = frozenset({"alg", "created", "expires", "keyid", "nonce", "tag"})
# RFC 9110 section 5.1 field names (tchar), already lower-cased.
_FIELD_NAME: Final = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
# The largest signature of a pinned key: an RSA signature is as long as the modulus, and the key
# set takes moduli of at most MAX_RSA_BITS (Ed25519 and P-256 signatures are 64 bytes).
_MAX_SIGNATURE_BYTES: Final = MAX_RSA_BITS // 8

# Fast path (1): one Dictionary member in the canonical form RFC 8941 section 4.1 serialises, made
# only of Keys (section 3.1.2), Strings without escapes (3.3.3: printable ASCII but '"' and '\'),
# Integers (3.3.1) and padded Base64 Byte Sequences (3.3.5). Component ids are restricted further
# to what _check_component admits (tchar field names and "@" derived names).
_SF_KEY: Final = r"[a-z*][a-z0-9_.*-]*"
_SF_PARAM: Final = rf';({_SF_KEY})=(?:(0|-?[1-9][0-9]{{0,14}})|"([\x20\x21\x23-\x5b\x5d-\x7e]*)")'
_SF_COMPONENT: Final = '"' + r"[a-z0-9@!#$%&'*+.^_`|~-]+" + '"'
_FAST_INPUT: Final = re.compile(
    rf"({_SF_KEY})=\(((?:{_SF_COMPONENT}(?: {_SF_COMPONENT})*)?)\)((?:{_SF_PARAM})*)"
)
_FAST_PARAM: Final = re.compile(_SF_PARAM)
_FAST_SIGNATURE: Final = re.compile(rf"({_SF_KEY})=:([A-Za-z0-9+/]*={{0,2}}):")
# Fast path (2): derived components read directly, and the RFC 3986 section 3 grammar (pchar,
# query) the package's resolver requires of the request URL; anything else goes through it.
_FAST_DERIVED: Final = frozenset({"@method", "@authority", "@path", "@query"})
_URL_CHARS: Final = r"A-Za-z0-9._~!$&'()*+,;=\-"
_FAST_AUTHORITY: Final = re.compile(rf"((?:[{_URL_CHARS}]|%[0-9A-Fa-f]{{2}})+)(?::([0-9]*))?")
_FAST_PATH: Final = re.compile(rf"/(?:[{_URL_CHARS}:@/]|%[0-9A-Fa-f]{{2}})*")
_FAST_QUERY: Final = re.compile(rf"(?:[{_URL_CHARS}:@/?]|%[0-9A-Fa-f]{{2}})*")
_MAX_TIMESTAMP: Final = 2**40
# Content-Digest (RFC 9530 section 2) of one canonical member: a supported algorithm's padded
# Base64 Byte Sequence, as the SaaS sends it; anything else goes to the package.
_FAST_DIGEST: Final = re.compile(r"(sha-256|sha-512)=:([A-Za-z0-9+/]*={0,2}):")
_DIGESTS: Final = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
# RFC 9421 section 3.3.4: an ECDSA P-256 signature is r and s, each 32 bytes, big-endian.
_P256_HALF: Final = 32
# RFC 9421 section 3.3.1: RSASSA-PSS with SHA-512, MGF1 with SHA-512 and a 64-byte salt.
_PSS_SALT_BYTES: Final = 64

# Fast path (5): the shapes of the Signature-Input fields of authentic requests (at most
# _MAX_SHAPES, the oldest forgotten first). A parameter value of a shape is an Integer without a
# sign (RFC 8941 section 3.3.1; a negative timestamp is refused) or a non-empty String without
# escapes (3.3.3), as fast path (1) reads them; the tag is the one the verifier selects.
_MAX_SHAPES: Final = 8
_SHAPE_INTEGER: Final = "(0|[1-9][0-9]{0,14})"
_SHAPE_STRING: Final = r'"([\x20\x21\x23-\x5b\x5d-\x7e]+)"'
_SHAPE_SIGNATURE: Final = "=:([A-Za-z0-9+/]*={0,2}):"
# Methods (RFC 9110 section 9.3) whose text every check of a derived value passes as it is.
_PLAIN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_SIGNATURE_FIELDS: Final = ("signature-input", "signature")

_Check = Callable[[bytes, bytes], object]
"""Verifies ``(signature, signature base)`` for one pinned key; raises when it does not."""


@dataclass(frozen=True, slots=True)
class _Shape:
    """The ``Signature-Input`` of an authentic request with the values left out: its label, its
    covered components (parameterless, read directly) and its parameter names in order.

    ``params`` matches the field after the Inner List, one group per parameter value but the
    tag (written out); ``keyid`` to ``alg`` are those groups' indexes. ``fields`` are the covered
    header fields and ``sources`` picks each component's value, in covered order, from
    ``(method, authority, path, query, *fields)``; ``template`` is the signature base with a
    ``{}`` for each value and for ``@signature-params``. ``gateway`` and ``digest`` are the
    indexes of ``x-gateway-id`` (always covered) and ``content-digest`` in ``fields``.
    """

    label: str
    params: re.Pattern[str]
    signature: re.Pattern[str]
    keyid: int
    created: int
    expires: int | None
    nonce: int
    alg: int | None
    fields: tuple[str, ...]
    sources: tuple[int, ...]
    template: str
    covered: tuple[str, ...]
    gateway: int
    digest: int | None


@dataclass(frozen=True, slots=True)
class VerifierSettings:
    """Limits and windows of signature verification (seconds and bytes)."""

    max_age: float = 60.0
    max_skew: float = 30.0
    tag: str = DEFAULT_TAG
    max_header_count: int = 256
    max_header_bytes: int = 64 * 1024
    max_signature_field_bytes: int = 4096
    max_signatures: int = 4
    max_components: int = 16
    max_nonce_length: int = 128

    def __post_init__(self) -> None:
        if self.max_age <= 0 or self.max_skew < 0:
            raise ValueError("max_age must be positive and max_skew non-negative")


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """What an accepted signature established about the request.

    ``covered`` lists the covered component identifiers in their serialized form, as they appear
    in the signature base (``'"@method"'``, ``'"content-digest"'``).
    """

    keyid: str
    alg: Algorithm
    label: str
    created: int
    expires: int | None
    nonce: str
    covered: tuple[str, ...]
    body_verified: bool


@dataclass(frozen=True, slots=True)
class _Candidate:
    label: str
    components: tuple[tuple[str, dict[str, Any]], ...]
    params: dict[str, Any]
    member: Any  # the parsed Signature-Input member, serialised again for @signature-params
    signature: bytes
    # The member as RFC 8941 serialises it (after "label="), when the fast reader found the field
    # already in that form: @signature-params is then this text as it arrived.
    text: str | None = None


class _Fields:
    """Read-only header view: the package only calls ``items()`` when verifying."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._pairs = pairs

    def items(self) -> Iterable[tuple[str, str]]:
        return self._pairs


class _Message:
    """The request as the package's component resolver expects it (no ``status_code``)."""

    __slots__ = ("headers", "method", "url")

    def __init__(self, method: str, url: str, headers: _Fields) -> None:
        self.method = method
        self.url = url
        self.headers = headers


@dataclass(frozen=True, slots=True)
class _Authentic:
    """A request whose signature verified, before its nonce met the replay memory."""

    verified: VerifiedRequest
    window_end: float
    safe_keyid: str | None


class SignatureVerifier:
    """Verifies relayed requests for one gateway (``gateway_id``) listening on ``hc_path``.

    ``hc_path`` is the Hybrid Connection path as it appears in URLs (for example ``hc-agent-1``):
    the signed ``@path`` must lie below ``/{hc_path}`` (HTTP requests) or ``/$hc/{hc_path}``
    (WebSocket connects), per the relay's URL layout, so a request signed for another Hybrid
    Connection is refused even before its signature is checked.
    """

    def __init__(
        self,
        keys: KeySet,
        replay_cache: ReplayCache | ReplayStore,
        *,
        gateway_id: str,
        hc_path: str,
        settings: VerifierSettings | None = None,
        clock: Callable[[], float] = time.time,
        reference: bool = False,
    ) -> None:
        """``clock`` returns Unix seconds; it is the gateway's notion of now for every check.

        ``reference`` turns both fast paths off: every field is parsed and every component
        resolved by the package (the semantics the fast paths are tested against).
        """
        if not gateway_id or not hc_path or hc_path.startswith("/") or hc_path.endswith("/"):
            raise ValueError("gateway_id and hc_path (without surrounding '/') are required")
        self._fast = not reference
        self._keys = keys
        self._checks = self._key_checks(keys)
        self._replay = replay_cache
        self._gateway_id = gateway_id
        self._prefixes = (f"/{hc_path}", f"/$hc/{hc_path}")
        self._below = tuple(prefix + "/" for prefix in self._prefixes)
        self._settings = settings or VerifierSettings()
        self._clock = clock
        self._skew = SkewEstimator(threshold=self._settings.max_skew)
        # Fast path (5): the shapes learnt, by their text up to the end of the Inner List, and
        # the header fields they read (the signature fields and every covered field).
        self._shapes: dict[str, _Shape] = {}
        self._wanted: frozenset[str] = frozenset(_SIGNATURE_FIELDS)
        # The last authority and its @authority value (the gateway's own configuration, so the
        # same on every request).
        self._authority: tuple[str, str | None] = ("", None)

    @property
    def keys(self) -> KeySet:
        """The key set currently trusted."""
        return self._keys

    def replace_keys(self, keys: KeySet) -> None:
        """Install a new key set; keys absent from it stop verifying at once (revocation)."""
        # One assignment installs both the set and its checks (see _lookup_key).
        self._checks = self._key_checks(keys)
        self._keys = keys

    def _key_checks(self, keys: KeySet) -> dict[str, tuple[PinnedKey, _Check]]:
        """Each pinned key with its verification, prepared once per key set, not per request."""
        build = _direct_check if self._fast else _package_check
        return {keyid: (key, build(key)) for keyid, key in keys.items()}

    def clock_skew(self) -> ClockSkewEstimate | None:
        """The current estimate of the local clock's offset from the signer's (for health)."""
        return self._skew.estimate(self._clock())

    def verify(
        self,
        *,
        method: str,
        authority: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None = None,
    ) -> VerifiedRequest:
        """Authenticate one request or raise ``SignatureError``.

        ``authority`` is the relay namespace host the SaaS addressed (from the gateway's own
        configuration, not from the request); ``path`` and ``query`` come from the relayed
        request target (``query`` without the ``?``, empty when there is none); ``headers`` are
        the relayed headers as name/value pairs; ``body`` is ``None`` when the request has none.

        Only for a verifier built on a :class:`ReplayCache`; a shared store answers
        asynchronously, through :meth:`verify_async`.
        """
        replay = self._replay
        if not isinstance(replay, ReplayCache):
            raise TypeError("a verifier on a shared replay store verifies with verify_async")
        authentic = self._authentic(method, authority, path, query, headers, body)
        found = authentic.verified
        admission = replay.admit(
            found.keyid, found.nonce, created=found.created, expires=authentic.window_end
        )
        return self._admitted(authentic, admission)

    async def verify_async(
        self,
        *,
        method: str,
        authority: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None = None,
    ) -> VerifiedRequest:
        """:meth:`verify`, with the nonce recorded in whichever replay memory the verifier has."""
        authentic = self._authentic(method, authority, path, query, headers, body)
        found = authentic.verified
        replay = self._replay
        if isinstance(replay, ReplayCache):
            admission = replay.admit(
                found.keyid, found.nonce, created=found.created, expires=authentic.window_end
            )
        else:
            admission = await replay.admit(
                found.keyid, found.nonce, created=found.created, expires=authentic.window_end
            )
        return self._admitted(authentic, admission)

    def _authentic(
        self,
        method: str,
        authority: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
    ) -> _Authentic:
        """Every check but the replay memory; raises ``SignatureError``."""
        if self._shapes:
            authentic = self._shaped(method, authority, path, query, headers, body)
            if authentic is not None:
                return authentic
        return self._general(method, authority, path, query, headers, body)

    def _general(
        self,
        method: str,
        authority: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
    ) -> _Authentic:
        """Every check but the replay memory, on any request; raises ``SignatureError``."""
        fields = self._field_lines(headers)
        sig_input_value = self._combined_field(fields, "signature-input")
        signature_value = self._combined_field(fields, "signature")
        if sig_input_value is None or signature_value is None:
            raise SignatureError(Reason.MISSING_SIGNATURE, "Signature or Signature-Input is absent")
        candidate = self._select(sig_input_value, signature_value)
        params = candidate.params
        for name in ("keyid", "created", "nonce"):
            if name not in params:
                raise SignatureError(Reason.MISSING_PARAMETER, f"signature lacks '{name}'")
        keyid: str = params["keyid"]
        safe_keyid = keyid if KEYID_PATTERN.fullmatch(keyid) else None
        covered_bare = {
            name for name, component_params in candidate.components if not component_params
        }
        required = REQUIRED_COMPONENTS + ((DIGEST_COMPONENT,) if body is not None else ())
        missing = [name for name in required if name not in covered_bare]
        if missing:
            raise SignatureError(
                Reason.MISSING_COMPONENT, f"signature does not cover {', '.join(missing)}"
            )

        # The key is looked up once and used below, so a concurrent key-set swap between the
        # lookup and the verification cannot change which key is used.
        key, check = self._lookup_key(keyid, params.get("alg"), safe_keyid)
        resolve = self._resolver(
            method, authority, path, query, headers, fields, candidate, safe_keyid
        )

        created: int = params["created"]
        expires: int | None = params.get("expires")
        if expires is not None and expires <= created:
            raise SignatureError(Reason.MALFORMED_SIGNATURE, "'expires' is not after 'created'")
        try:
            base, covered = _signature_base(resolve, candidate)
        except Exception as exc:  # a value that cannot be signed: "not authentic"
            raise SignatureError(
                Reason.BAD_SIGNATURE, "signature does not verify", keyid=safe_keyid
            ) from exc
        authentic = self._conclude(
            key,
            check,
            candidate.label,
            created,
            expires,
            params["nonce"],
            candidate.signature,
            base,
            tuple(covered),
            covered.get(f'"{DIGEST_COMPONENT}"'),
            safe_keyid,
            body,
        )
        if candidate.text is not None:
            self._learn(candidate)
        return authentic

    def _conclude(
        self,
        key: PinnedKey,
        check: _Check,
        label: str,
        created: int,
        expires: int | None,
        nonce: str,
        signature: bytes,
        base: bytes,
        covered: tuple[str, ...],
        digest: str | None,
        safe_keyid: str | None,
        body: bytes | None,
    ) -> _Authentic:
        """The signature, time and digest checks of a request that passed every other one."""
        settings = self._settings
        now = self._clock()
        time_failure = self._time_failure(created, expires, now)
        try:
            check(signature, base)
        except Exception as exc:  # any failure at this point means "not authentic"
            raise SignatureError(
                Reason.BAD_SIGNATURE, "signature does not verify", keyid=safe_keyid
            ) from exc

        # Authentic from here on: the timestamps are the signer's, so they are evidence of skew.
        self._skew.record(now - created, now)
        if time_failure is not None:
            raise self._time_error(time_failure, now, safe_keyid)

        if digest is not None and not self._digest_matches(
            digest, body if body is not None else b""
        ):
            raise SignatureError(
                Reason.DIGEST_MISMATCH,
                "Content-Digest does not authenticate the body",
                keyid=safe_keyid,
            )

        window_end = min(created + settings.max_age, math.inf if expires is None else expires)
        verified = VerifiedRequest(
            keyid=key.keyid,
            alg=key.alg,
            label=label,
            created=created,
            expires=expires,
            nonce=nonce,
            covered=covered,
            body_verified=digest is not None,
        )
        return _Authentic(verified, window_end + settings.max_skew, safe_keyid)

    # -- fast path (5): the shapes of authentic requests ---------------------------------------

    def _learn(self, candidate: _Candidate) -> None:
        """Keep the shape of an authentic request's ``Signature-Input``, when the fast readers
        took it and its components are all read directly (see :class:`_Shape`)."""
        names = tuple(name for name, _ in candidate.components)
        if any(params for _, params in candidate.components) or any(
            name.startswith("@") and name not in _FAST_DERIVED for name in names
        ):
            return
        head = f"{candidate.label}=(" + " ".join(f'"{name}"' for name in names) + ")"
        if head in self._shapes:
            return
        # One group per value, in the order they arrived; the authentic request passed
        # _check_params, so its timestamps were Integers and every other value a String.
        pattern: list[str] = []
        groups: dict[str, int] = {}
        for name, value in candidate.params.items():
            if name == "tag":
                pattern.append(re.escape(f';tag="{value}"'))
                continue
            groups[name] = len(groups)
            kind = _SHAPE_INTEGER if type(value) is int else _SHAPE_STRING
            pattern.append(f";{name}={kind}")  # a name of _SIGNATURE_PARAMS: letters only
        fields = tuple(name for name in names if not name.startswith("@"))
        derived = ("@method", "@authority", "@path", "@query")
        sources = tuple(
            derived.index(name) if name in derived else len(derived) + fields.index(name)
            for name in names
        )
        lines = [f'"{name}": {{}}' for name in names]  # no component id holds a brace
        lines.append('"@signature-params": {}')
        shape = _Shape(
            label=candidate.label,
            params=re.compile("".join(pattern)),
            signature=re.compile(re.escape(candidate.label) + _SHAPE_SIGNATURE),
            keyid=groups["keyid"],
            created=groups["created"],
            expires=groups.get("expires"),
            nonce=groups["nonce"],
            alg=groups.get("alg"),
            fields=fields,
            sources=sources,
            template="\n".join(lines),
            covered=tuple(f'"{name}"' for name in names),
            gateway=fields.index(GATEWAY_ID_HEADER),
            digest=fields.index(DIGEST_COMPONENT) if DIGEST_COMPONENT in fields else None,
        )
        shapes = dict(self._shapes)
        if len(shapes) >= _MAX_SHAPES:
            del shapes[next(iter(shapes))]
        shapes[head] = shape
        # The fields first: a request read meanwhile finds every field its shape needs.
        self._wanted = frozenset(
            (*_SIGNATURE_FIELDS, *(field for known in shapes.values() for field in known.fields))
        )
        self._shapes = shapes

    def _shaped(
        self,
        method: str,
        authority: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
    ) -> _Authentic | None:
        """Every check but the replay memory, for a request of a shape already seen authentic;
        ``None`` (before any cryptography) when the general reading must decide."""
        settings = self._settings
        if len(headers) > settings.max_header_count:
            return None
        # One pass: the sizes, and the lines of the fields some shape reads.
        wanted = self._wanted
        found: dict[str, str] = {}
        size = 0
        for name, value in headers:
            size += len(name) + len(value)
            lowered = name.lower()
            if lowered in wanted:
                if lowered in found:
                    return None  # a field on several lines: joined or refused, as the case may be
                found[lowered] = value
        if size > settings.max_header_bytes:
            return None
        sig_input = found.get("signature-input")
        signature_value = found.get("signature")
        if sig_input is None or signature_value is None:
            return None
        limit = settings.max_signature_field_bytes
        if len(sig_input) > limit or len(signature_value) > limit:
            return None
        end = sig_input.find(")") + 1  # a canonical Inner List ends at its first ")"
        shape = self._shapes.get(sig_input[:end])
        if shape is None:
            return None
        match = shape.params.fullmatch(sig_input, end)
        encoded = shape.signature.fullmatch(signature_value)
        if match is None or encoded is None or len(encoded[1]) % 4:
            return None
        # Letters of the alphabet, then at most two "=" filling a multiple of four: padded Base64
        # (RFC 4648 section 4) that the strict decoder cannot refuse.
        signature = binascii.a2b_base64(encoded[1], strict_mode=True)
        if not 0 < len(signature) <= _MAX_SIGNATURE_BYTES:
            return None
        if body is not None and shape.digest is None:
            return None
        values = match.groups()
        created = int(values[shape.created])
        expires = None if shape.expires is None else int(values[shape.expires])
        nonce = values[shape.nonce]
        if created >= _MAX_TIMESTAMP or len(nonce) > settings.max_nonce_length:
            return None
        if expires is not None and not created < expires < _MAX_TIMESTAMP:
            return None
        keyid = values[shape.keyid]
        pinned = self._checks.get(keyid)
        if pinned is None:
            return None
        key, check = pinned
        if not key.active_at(self._clock()):
            return None
        if shape.alg is not None and values[shape.alg] != key.alg:
            return None
        if not (path in self._prefixes or path.startswith(self._below)):
            return None
        if method not in _PLAIN_METHODS or not _FAST_PATH.fullmatch(path):
            return None
        if query and not _FAST_QUERY.fullmatch(query):
            return None
        last, host = self._authority
        if last != authority:
            host = _fast_host(authority)
            self._authority = (authority, host)
        if host is None:
            return None
        # A plain method, a target in the URI grammar and parameters the shape's pattern took are
        # printable ASCII without surrounding blanks, as a base's derived values must be (RFC 9421
        # section 2.2); the field values are checked below.
        known = [method, host, path, "?" + query]
        for name in shape.fields:
            line = found.get(name)
            if line is None:
                return None
            # RFC 9421 section 2.1 trims SP and HTAB; a value with any other control character
            # (or an obsolete line fold) is for the general reading to refuse.
            value = line.strip(" \t")
            if not (value.isascii() and value.isprintable()):
                return None
            known.append(value)
        if known[4 + shape.gateway] != self._gateway_id:
            return None
        text = shape.template.format(
            *[known[source] for source in shape.sources], sig_input[len(shape.label) + 1 :]
        )
        return self._conclude(
            key,
            check,
            shape.label,
            created,
            expires,
            nonce,
            signature,
            text.encode(),  # all ASCII (see above): its UTF-8 bytes are its ASCII bytes
            shape.covered,
            None if shape.digest is None else known[4 + shape.digest],
            keyid,
            body,
        )

    @staticmethod
    def _admitted(authentic: _Authentic, admission: Admission) -> VerifiedRequest:
        """The verified request if the replay memory admitted its nonce; else the refusal."""
        safe_keyid = authentic.safe_keyid
        if admission is Admission.REPLAY:
            raise SignatureError(Reason.REPLAY, "nonce already used", keyid=safe_keyid)
        if admission is Admission.BEFORE_START:
            raise SignatureError(
                Reason.REPLAY,
                "signature predates the replay-cache start barrier (state not restored)",
                keyid=safe_keyid,
            )
        if admission is Admission.CLOSED:
            raise SignatureError(
                Reason.REPLAY_CACHE_CLOSED, "replay cache closed for shutdown", keyid=safe_keyid
            )
        if admission is Admission.FULL:
            raise SignatureError(Reason.REPLAY_CACHE_FULL, "replay cache is full", keyid=safe_keyid)
        if admission is Admission.UNAVAILABLE:
            # Fail closed: without the shared memory nobody can tell whether another gateway
            # already served this nonce (RFC 9421 section 7.2.2).
            raise SignatureError(
                Reason.REPLAY_STORE_UNAVAILABLE, "replay store unavailable", keyid=safe_keyid
            )
        return authentic.verified

    def _digest_matches(self, value: str, body: bytes) -> bool:
        """Whether the covered Content-Digest ``value`` authenticates ``body`` (RFC 9530)."""
        matches = fast_content_digest(value, body) if self._fast else None
        if matches is not None:
            return matches
        from http_message_signatures import ContentDigest

        try:
            ContentDigest.verify(value, body)
        except Exception:  # malformed, unsupported algorithm or mismatch
            return False
        return True

    # -- structural checks (no cryptography) --------------------------------------------------

    def _field_lines(self, headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
        """The header sizes checked, and every field's lines by lower-cased name (one pass)."""
        settings = self._settings
        if len(headers) > settings.max_header_count:
            raise SignatureError(Reason.HEADERS_TOO_LARGE, "too many header fields")
        fields, size = field_lines(headers)
        if size > settings.max_header_bytes:
            raise SignatureError(Reason.HEADERS_TOO_LARGE, "header fields too large")
        return fields

    def _combined_field(self, fields: Mapping[str, list[str]], name: str) -> str | None:
        """All field lines of ``name`` joined as RFC 9110 section 5.3 (and the package) do."""
        lines = fields.get(name)
        if not lines:
            return None
        combined = ", ".join(value.strip(" \t") for value in lines)
        if len(combined) > self._settings.max_signature_field_bytes:
            raise SignatureError(Reason.HEADERS_TOO_LARGE, f"{name} field too large")
        if not combined.isascii() or not combined.isprintable():
            raise SignatureError(Reason.MALFORMED_SIGNATURE, f"{name} has invalid characters")
        return combined

    def _select(self, sig_input_value: str, signature_value: str) -> _Candidate:
        settings = self._settings
        fast_inputs = fast_signature_input(sig_input_value) if self._fast else None
        inputs = fast_inputs or _parse_dictionary(sig_input_value, "Signature-Input")
        signatures = (self._fast and fast_signature(signature_value)) or _parse_dictionary(
            signature_value, "Signature"
        )
        if len(inputs) > settings.max_signatures or len(signatures) > settings.max_signatures:
            raise SignatureError(Reason.MALFORMED_SIGNATURE, "too many signatures")
        if inputs.keys() != signatures.keys():
            raise SignatureError(
                Reason.MALFORMED_SIGNATURE, "Signature and Signature-Input labels differ"
            )
        selected: list[_Candidate] = []
        for label, member in inputs.items():
            # A member the fast reader took is the whole field, already in serialised form.
            text = sig_input_value[len(label) + 1 :] if fast_inputs is not None else None
            candidate = self._candidate(label, member, signatures[label], text)
            if candidate.params.get("tag") == settings.tag:
                selected.append(candidate)
        if not selected:
            raise SignatureError(Reason.MISSING_SIGNATURE, "no signature with the expected tag")
        if len(selected) > 1:
            raise SignatureError(Reason.MALFORMED_SIGNATURE, "several signatures with the tag")
        return selected[0]

    def _candidate(self, label: str, member: Any, signature: Any, text: str | None) -> _Candidate:
        settings = self._settings
        if not (isinstance(member, tuple) and isinstance(member[0], list)):
            raise SignatureError(Reason.MALFORMED_SIGNATURE, "Signature-Input member not a list")
        items, params = member
        if not (isinstance(signature, tuple) and isinstance(signature[0], bytes)):
            raise SignatureError(Reason.MALFORMED_SIGNATURE, "Signature member not a byte sequence")
        if not 0 < len(signature[0]) <= _MAX_SIGNATURE_BYTES:
            raise SignatureError(Reason.MALFORMED_SIGNATURE, "signature value has a bad size")
        if len(items) > settings.max_components:
            raise SignatureError(Reason.MALFORMED_SIGNATURE, "too many covered components")
        components: list[tuple[str, dict[str, Any]]] = []
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for item in items:
            name, component_params = item
            _check_component(name, component_params)
            identity = (
                (name, tuple(sorted((k, repr(v)) for k, v in component_params.items())))
                if component_params
                else (name, ())
            )
            if identity in seen:
                raise SignatureError(Reason.MALFORMED_SIGNATURE, "component covered twice")
            seen.add(identity)
            components.append((name, component_params))
        self._check_params(params)
        return _Candidate(label, tuple(components), params, member, signature[0], text)

    def _check_params(self, params: dict[str, Any]) -> None:
        # RFC 9421 section 2.3 parameters; anything else is refused as the package would.
        for name, value in params.items():
            if name not in _SIGNATURE_PARAMS:
                raise SignatureError(Reason.MALFORMED_SIGNATURE, "unknown signature parameter")
            if name in ("created", "expires"):
                if type(value) is not int or not 0 <= value < _MAX_TIMESTAMP:
                    raise SignatureError(Reason.MALFORMED_SIGNATURE, f"'{name}' not a timestamp")
            elif type(value) is not str or not value:
                raise SignatureError(Reason.MALFORMED_SIGNATURE, f"'{name}' not a string")
        if len(params.get("nonce", "")) > self._settings.max_nonce_length:
            raise SignatureError(Reason.MALFORMED_SIGNATURE, "nonce too long")

    def _lookup_key(
        self, keyid: str, alg: str | None, safe_keyid: str | None
    ) -> tuple[PinnedKey, _Check]:
        # The key and its check come from one entry of one set, so a concurrent key-set swap
        # cannot pair a key with another key's check.
        pinned = self._checks.get(keyid)
        if pinned is None:
            raise SignatureError(Reason.UNKNOWN_KEY, "keyid not in the pinned key set")
        key = pinned[0]
        if not key.active_at(self._clock()):
            raise SignatureError(
                Reason.KEY_NOT_ACTIVE, "key outside its validity window", keyid=safe_keyid
            )
        if alg is not None and alg != key.alg:
            raise SignatureError(
                Reason.ALG_MISMATCH, "alg does not match the key", keyid=safe_keyid
            )
        return pinned

    def _resolver(
        self,
        method: str,
        authority: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        fields: Mapping[str, list[str]],
        candidate: _Candidate,
        safe_keyid: str | None,
    ) -> Callable[[str, dict[str, Any]], object]:
        """What gives each covered component's value, once the target and headers are
        acceptable: the fast path's values, or the package's resolver."""
        if not any(path == prefix or path.startswith(prefix + "/") for prefix in self._prefixes):
            raise SignatureError(
                Reason.WRONG_GATEWAY, "path is outside this Hybrid Connection", keyid=safe_keyid
            )
        fast = (
            fast_components(method, authority, path, query, fields, candidate.components)
            if self._fast
            else None
        )
        resolve: Callable[[str, dict[str, Any]], object]
        if fast is not None:
            resolve = lambda name, params: fast[name]  # noqa: E731
        else:
            from http_message_signatures import HTTPSignatureComponentResolver

            url = f"https://{authority}{path}" + (f"?{query}" if query else "")
            message = _Message(method, url, _Fields(headers))
            try:
                # Validates method and URL syntax exactly as the signature base will need them.
                resolver = HTTPSignatureComponentResolver(message)  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise SignatureError(
                    Reason.MALFORMED_REQUEST, "request target cannot be signed", keyid=safe_keyid
                ) from exc
            resolve = functools.partial(_resolve_with, resolver)
        for name, _ in candidate.components:
            if name.startswith("@"):
                continue
            lines_of = fields.get(name)
            if lines_of is None:
                raise SignatureError(
                    Reason.MISSING_COMPONENT, "a covered header is absent", keyid=safe_keyid
                )
            # RFC 9421 section 2.1 signs the field lines joined with ", ", but a server may read
            # only the first or the last line: the value it acts on would not be the one signed.
            # Every covered field must therefore arrive on exactly one line.
            if len(lines_of) > 1:
                raise SignatureError(
                    Reason.DUPLICATE_FIELD,
                    "a covered header appears on more than one field line",
                    keyid=safe_keyid,
                )
        lines = [value.strip(" \t") for value in fields.get(GATEWAY_ID_HEADER, ())]
        if lines != [self._gateway_id]:
            raise SignatureError(
                Reason.WRONG_GATEWAY, "request is addressed to another gateway", keyid=safe_keyid
            )
        return resolve

    # -- time ---------------------------------------------------------------------------------

    def _time_failure(self, created: int, expires: int | None, now: float) -> Reason | None:
        settings = self._settings
        if created > now + settings.max_skew:
            return Reason.CLOCK_SKEW
        # The window ends at (not after) min(created + max_age, expires) + max_skew, the instant
        # the replay memory is told to forget the nonce (every store drops an entry once its
        # end <= now); accepting at that instant would serve a replay (RFC 9421 section 7.2.2).
        if created + settings.max_age <= now - settings.max_skew:
            return Reason.EXPIRED
        if expires is not None and expires <= now - settings.max_skew:
            return Reason.EXPIRED
        return None

    def _time_error(self, failure: Reason, now: float, keyid: str | None) -> SignatureError:
        estimate = self._skew.estimate(now)
        if estimate is not None and estimate.systematic:
            direction = "ahead of" if estimate.offset > 0 else "behind"
            return SignatureError(
                Reason.CLOCK_SKEW,
                f"local clock appears {abs(estimate.offset):.0f} s {direction} the signer's",
                keyid=keyid,
                clock_offset=estimate.offset,
            )
        if failure is Reason.CLOCK_SKEW:
            return SignatureError(
                Reason.CLOCK_SKEW, "signature 'created' is beyond the tolerated skew", keyid=keyid
            )
        return SignatureError(Reason.EXPIRED, "signature is too old or has expired", keyid=keyid)


def _parse_dictionary(value: str, name: str) -> dict[str, Any]:
    """RFC 8941 Dictionary; duplicate keys (members or parameters) are refused as ambiguous."""

    import http_sf

    def reject_duplicate(key: str, context: str) -> None:
        raise ValueError("duplicate key")

    try:
        parsed = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=reject_duplicate
        )
    except Exception as exc:  # the parser's own errors and our duplicate refusal alike
        raise SignatureError(
            Reason.MALFORMED_SIGNATURE, f"{name} is not a valid Dictionary"
        ) from exc
    if not isinstance(parsed, dict):
        raise SignatureError(Reason.MALFORMED_SIGNATURE, f"{name} is not a valid Dictionary")
    return parsed


def _check_component(name: object, params: dict[str, Any]) -> None:
    """Component ids are lower-case Structured Field Strings (RFC 9421 section 2)."""
    if type(name) is not str or not name:
        raise SignatureError(Reason.MALFORMED_SIGNATURE, "component id not a string")
    if name != name.lower():
        raise SignatureError(Reason.MALFORMED_SIGNATURE, "component id not lower-case")
    if name.startswith("@"):
        allowed = _DERIVED_PARAMS.get(name)
        if allowed is None:
            raise SignatureError(Reason.MALFORMED_SIGNATURE, "unknown derived component")
    elif _FIELD_NAME.fullmatch(name):
        allowed = _FIELD_PARAMS
    else:
        raise SignatureError(Reason.MALFORMED_SIGNATURE, "component id not a field name")
    if not set(params) <= allowed:
        raise SignatureError(Reason.MALFORMED_SIGNATURE, "component parameter not allowed")


def _resolve_with(
    resolver: HTTPSignatureComponentResolver, name: str, params: dict[str, Any]
) -> object:
    """One component's value from the package's resolver."""
    from http_sf.compat import Item

    node = Item(name)
    node.params.update(params)
    return resolver.resolve(node)


def fast_signature_input(value: str) -> dict[str, Any] | None:
    """``Signature-Input`` parsed as http_sf would, when it is one canonical member (see the
    module notes); ``None`` when the general parser must decide."""
    match = _FAST_INPUT.fullmatch(value)
    if match is None:
        return None
    label, inner, param_text = match[1], match[2], match[3]
    params: dict[str, Any] = {}
    # findall gives "" for the alternative that did not match; an Integer is never empty.
    for key, integer, string in _FAST_PARAM.findall(param_text):
        if key in params:
            return None  # a repeated parameter: the general parser refuses it
        params[key] = int(integer) if integer else string
    items: list[tuple[str, dict[str, Any]]] = (
        [(name[1:-1], {}) for name in inner.split(" ")] if inner else []
    )
    return {label: (items, params)}


def fast_signature(value: str) -> dict[str, Any] | None:
    """``Signature`` parsed as http_sf would, when it is one canonical member (see the module
    notes); ``None`` when the general parser must decide."""
    member = _byte_sequence_member(_FAST_SIGNATURE, value)
    return None if member is None else {member[0]: (member[1], {})}


def _byte_sequence_member(pattern: re.Pattern[str], value: str) -> tuple[str, bytes] | None:
    """The key and bytes of a Dictionary of one parameterless Byte Sequence member (RFC 8941
    section 3.3.5) that ``pattern`` matches whole, in padded Base64; ``None`` otherwise."""
    match = pattern.fullmatch(value)
    if match is None or len(match[2]) % 4:
        return None
    try:
        return match[1], binascii.a2b_base64(match[2], strict_mode=True)
    except binascii.Error:
        return None


def fast_components(
    method: str,
    authority: str,
    path: str,
    query: str,
    fields: Mapping[str, list[str]],
    components: Iterable[tuple[str, dict[str, Any]]],
) -> dict[str, str] | None:
    """Each covered component's value as the package's resolver gives it for the request
    ``https://{authority}{path}?{query}``, when the request and components take the fast path
    (see the module notes); ``None`` when the resolver must decide.

    ``fields`` are the request's field lines by lower-cased name (:func:`field_lines`). Header
    values are taken from the first field line of that name (the caller refuses covered fields
    on several lines), trimmed of SP and HTAB as RFC 9421 section 2.1 says.
    """
    if method != method.upper():
        return None
    host_value = _fast_host(authority)
    if host_value is None or not _FAST_PATH.fullmatch(path) or not _FAST_QUERY.fullmatch(query):
        return None
    derived = {"@method": method, "@authority": host_value, "@path": path, "@query": "?" + query}
    values: dict[str, str] = {}
    for name, params in components:
        if params:
            return None
        if name.startswith("@"):
            if name not in _FAST_DERIVED:
                return None
            values[name] = derived[name]
            continue
        lines = fields.get(name)
        if lines is None or "\r\n" in lines[0]:
            return None  # absent (refused later) or an obsolete fold: the resolver decides
        values[name] = lines[0].strip(" \t")
    return values


def _fast_host(authority: str) -> str | None:
    """The ``@authority`` value of ``https://{authority}`` as the package's resolver gives it,
    when ``authority`` is in the RFC 3986 grammar it demands; ``None`` when it must decide."""
    target = _FAST_AUTHORITY.fullmatch(authority)
    if target is None:
        return None
    host, port = target.groups()
    # RFC 9421 section 2.2.3: lower-cased host, default port (https, 443) omitted.
    default_port = not port or port.lstrip("0") == "443"
    return host.lower() if default_port else f"{host.lower()}:{port}"


def _signature_base(
    resolve: Callable[[str, dict[str, Any]], object], candidate: _Candidate
) -> tuple[bytes, dict[str, str]]:
    """The signature base of RFC 9421 section 2.5 and the covered values by serialised id.

    Raises (any exception; the caller answers ``bad_signature``) for a component that cannot be
    resolved or whose value may not appear in a base.
    """
    covered: dict[str, str] = {}
    lines: list[str] = []
    for name, params in candidate.components:
        # A parameterless id serialises as a bare String; _check_component admitted only derived
        # names and tchar field names, neither of which holds a character String escapes.
        key = f'"{name}"' if not params else _serialise((name, params))
        value = resolve(name, params)
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ValueError("a component value cannot be part of a signature base")
        if name.startswith("@"):
            # Section 2.2: derived values are printable and carry no surrounding whitespace.
            if value and (not value.isprintable() or value[0] == " " or value[-1] == " "):
                raise ValueError("a derived component value is not printable")
        elif value and not value.replace("\t", " ").isprintable():
            # Section 2.1: field values may hold HTAB but no other control character.
            raise ValueError("a field component value holds control characters")
        covered[key] = value
        lines.append(f"{key}: {value}")
    lines.append('"@signature-params": ' + _signature_params(candidate))
    base = "\n".join(lines)
    if not base.isascii():
        raise ValueError("the signature base is not ASCII")
    return base.encode("ascii"), covered


def _signature_params(candidate: _Candidate) -> str:
    """The ``@signature-params`` value: the member re-serialised per RFC 8941 (section 2.3).

    The common shape (parameterless component ids, and the parameters ``_check_params`` admits:
    Integers and Strings) is written directly, following RFC 8941 sections 4.1.1.1 (Inner List),
    4.1.1.2 (Parameters), 4.1.4 (Integer) and 4.1.6 (String: ``\\`` and ``"`` escaped; the parser
    admitted nothing else that needs it). Anything else goes through the library's serialiser. A
    member the fast reader matched is already in that form and is used as it arrived.
    """
    if candidate.text is not None:
        return candidate.text
    if any(params for _, params in candidate.components):
        label = candidate.label
        return _serialise({label: candidate.member})[len(label) + 1 :]
    names = " ".join(f'"{name}"' for name, _ in candidate.components)
    parts = [f"({names})"]
    for key, value in candidate.params.items():
        if type(value) is int:
            parts.append(f";{key}={value}")
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f';{key}="{escaped}"')
    return "".join(parts)


def _serialise(value: Any) -> str:
    """RFC 8941 serialisation by http_sf, for shapes the direct writers above do not take."""
    import http_sf

    return str(http_sf.ser(value))


def field_lines(headers: Iterable[tuple[str, str]]) -> tuple[dict[str, list[str]], int]:
    """Each field's line values by lower-cased name, in arrival order, and the bytes of all
    names and values (what the size limit counts), in one pass over the header list."""
    fields: dict[str, list[str]] = {}
    size = 0
    for name, value in headers:
        size += len(name) + len(value)
        lowered = name.lower()
        lines = fields.get(lowered)
        if lines is None:
            fields[lowered] = [value]
        else:
            lines.append(value)
    return fields, size


def fast_content_digest(value: str, body: bytes) -> bool | None:
    """Whether a Content-Digest of one canonical member (a padded Base64 SHA-256 or SHA-512
    digest, RFC 9530 section 2) matches ``body``, as the package's check would say; ``None``
    when the package must decide."""
    member = _byte_sequence_member(_FAST_DIGEST, value)
    if member is None:
        return None
    algorithm, digest = member
    # A digest of the wrong length cannot match; compare_digest takes the same time regardless.
    return hmac.compare_digest(digest, _DIGESTS[algorithm](body).digest())


def _direct_check(key: PinnedKey) -> _Check:
    """The verification of RFC 9421 section 3.3 for ``key``, by cryptography and the standard
    library directly. The algorithm follows from the pinned key's type (``PinnedKey`` holds
    the type to its ``alg``), never from the request, so a public key cannot be turned into
    an HMAC secret (the classic algorithm confusion)."""
    material = key.public_key
    if isinstance(material, SharedSecret):

        def check_hmac(signature: bytes, base: bytes) -> None:
            # Section 3.3.3: HMAC-SHA256 over the base, compared in constant time.
            expected = hmac.digest(material.reveal(), base, "sha256")
            if not hmac.compare_digest(expected, signature):
                raise InvalidSignature

        return check_hmac
    if isinstance(material, ec.EllipticCurvePublicKey):
        ecdsa = ec.ECDSA(hashes.SHA256())

        def check_ecdsa(signature: bytes, base: bytes) -> None:
            # Section 3.3.4: the signature is r || s, each an unsigned 32-byte big-endian
            # integer; cryptography verifies the DER (RFC 3279) encoding of the pair.
            if len(signature) != 2 * _P256_HALF:
                raise InvalidSignature
            r = int.from_bytes(signature[:_P256_HALF], "big")
            s = int.from_bytes(signature[_P256_HALF:], "big")
            material.verify(encode_dss_signature(r, s), base, ecdsa)

        return check_ecdsa
    if isinstance(material, rsa.RSAPublicKey):
        # Section 3.3.1. The padding and hash objects are built once per key (per key set), not
        # per request. The salt length is fixed at 64, not "auto": a signature with any other
        # salt length is refused, as the section prescribes the parameters exactly.
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=_PSS_SALT_BYTES)
        sha512 = hashes.SHA512()
        modulus_bytes = (material.key_size + 7) // 8

        def check_rsa_pss(signature: bytes, base: bytes) -> None:
            # RFC 8017 section 8.1.2 step 1: a signature is exactly k octets (k the modulus
            # length). Checked here because OpenSSL takes a shorter one as the same integer.
            if len(signature) != modulus_bytes:
                raise InvalidSignature
            material.verify(signature, base, pss, sha512)

        return check_rsa_pss
    # Section 3.3.6: Ed25519 over the base as it is, by libsodium (about half the CPU of
    # cryptography's OpenSSL backend, benchmarks/signatures-report.md). libsodium is stricter
    # than OpenSSL: it also refuses a small-order R and a non-canonical R or key, which an honest
    # RFC 8032 signer never produces (tests/unit/auth/test_auth_ed25519.py lists each case).
    # The key set has already refused a key libsodium would not take (gateway/auth/keys.py).
    # Imported here: only a gateway that pins an Ed25519 key pays for loading libsodium.
    from nacl.signing import VerifyKey

    verify_key = VerifyKey(material.public_bytes_raw())

    def check_ed25519(signature: bytes, base: bytes) -> None:
        # VerifyKey refuses a signature that is not exactly 64 bytes before libsodium runs.
        verify_key.verify(base, signature)

    return check_ed25519


def _package_check(key: PinnedKey) -> _Check:
    """The same verification by the package's algorithm classes (the reference semantics)."""
    from http_message_signatures import algorithms

    classes: dict[str, type[algorithms.HTTPSignatureAlgorithm]] = {
        "ed25519": algorithms.ED25519,
        "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
        "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
        "hmac-sha256": algorithms.HMAC_SHA256,
    }
    pinned = key.public_key
    material = pinned.reveal() if isinstance(pinned, SharedSecret) else pinned
    verify: _Check = classes[key.alg](public_key=material).verify
    return verify
