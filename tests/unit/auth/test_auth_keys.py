"""Key-set documents: loading PEM and JWK keys, refusing bad documents, agreeing with the schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth import KeySet, KeySetError, PinnedKey
from gateway.devkit.signing import generate_key, key_entry, keyset_document

SCHEMA = json.loads(
    (Path(__file__).parents[3] / "schemas" / "signing-keys.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
T0 = 1_750_000_000.0
ED = generate_key("ed25519")
EC = generate_key("ecdsa-p256-sha256")


def document(*entries: dict[str, object]) -> dict[str, Any]:
    return keyset_document(entries)


def entry(keyid: str = "k-1", key: Any = ED, form: str = "pem") -> dict[str, object]:
    return key_entry(keyid, key, not_before=T0, not_after=T0 + 3600, form=form)  # type: ignore[arg-type]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("form", ["pem", "jwk"])
def test_both_algorithms_load_in_both_forms(form: str) -> None:
    doc = document(entry("ed", ED, form), entry("ec", EC, form))
    VALIDATOR.validate(doc)
    keys = KeySet.from_json(json.dumps(doc))
    assert sorted(keys) == ["ec", "ed"]
    assert keys["ed"].alg == "ed25519"
    assert keys["ec"].alg == "ecdsa-p256-sha256"
    assert keys["ed"].public_key.public_bytes_raw() == ED.public_key().public_bytes_raw()  # type: ignore[union-attr]
    assert keys["ed"].not_before == T0
    assert keys["ed"].not_after == T0 + 3600
    assert keys["ed"].active_at(T0)
    assert not keys["ed"].active_at(T0 + 3600)


def _mutations() -> list[tuple[str, Any]]:
    """(name, function turning a valid document into an invalid one)."""

    def set_in_key(field: str, value: object) -> Any:
        def mutate(doc: dict[str, Any]) -> None:
            doc["keys"][0][field] = value

        return mutate

    def delete_in_key(field: str) -> Any:
        def mutate(doc: dict[str, Any]) -> None:
            del doc["keys"][0][field]

        return mutate

    def jwk(field: str, value: object) -> Any:
        def mutate(doc: dict[str, Any]) -> None:
            key = doc["keys"][0]
            key["jwk"] = {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43}
            del key["public_key_pem"]
            key["jwk"][field] = value

        return mutate

    return [
        ("unknown top-level member", lambda d: d.update(extra=1)),
        ("empty key list", lambda d: d.update(keys=[])),
        ("unknown key member", set_in_key("revoked", True)),
        ("missing keyid", delete_in_key("keyid")),
        ("bad keyid characters", set_in_key("keyid", 'k"1')),
        ("long keyid", set_in_key("keyid", "k" * 129)),
        ("unsupported alg", set_in_key("alg", "hmac-sha256")),
        ("rsa-v1_5-sha256 alg", set_in_key("alg", "rsa-v1_5-sha256")),
        ("missing key", delete_in_key("public_key_pem")),
        ("both pem and jwk", set_in_key("jwk", {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43})),
        ("not a time", set_in_key("not_after", "tomorrow")),
        ("naive time", set_in_key("not_before", "2025-01-01T00:00:00")),
        ("date without time", set_in_key("not_before", "2025-01-01")),
        ("basic format time", set_in_key("not_before", "20250101T000000Z")),
        ("private jwk member", jwk("d", "A" * 43)),
        ("wrong jwk curve", jwk("crv", "X25519")),
        ("short jwk x", jwk("x", "AAAA")),
        ("padded jwk x", jwk("x", "A" * 42 + "=")),
    ]


@pytest.mark.parametrize(("name", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_invalid_documents_are_refused_by_loader_and_schema(name: str, mutate: Any) -> None:
    refused_by_loader_and_schema(document(entry()), mutate, name)


def refused_by_loader_and_schema(doc: dict[str, Any], mutate: Any, name: str) -> None:
    """``doc`` is valid; ``mutate`` (on a copy) makes it one the loader and schema refuse."""
    VALIDATOR.validate(doc)
    broken = copy.deepcopy(doc)
    mutate(broken)
    with pytest.raises(KeySetError):
        KeySet.from_document(broken)
    assert not VALIDATOR.is_valid(broken), name


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("alg does not match pem key", lambda d: d["keys"][0].update(alg="ecdsa-p256-sha256")),
        ("rsa alg for an ed25519 pem key", lambda d: d["keys"][0].update(alg="rsa-pss-sha512")),
        ("impossible date", lambda d: d["keys"][0].update(not_before="2025-02-30T00:00:00Z")),
        ("window inverted", lambda d: d["keys"][0].update(not_before=d["keys"][0]["not_after"])),
        ("duplicate keyid", lambda d: d["keys"].append(dict(d["keys"][0]))),
        ("garbage pem", lambda d: d["keys"][0].update(public_key_pem="-----BEGIN PUBLIC KEY-----")),
        ("too many keys", lambda d: d.update(keys=[entry(f"k{i}") for i in range(33)])),
    ],
)
def test_semantic_errors_are_refused(name: str, mutate: Any) -> None:
    doc = document(entry())
    mutate(doc)
    with pytest.raises(KeySetError):
        KeySet.from_document(doc)


def test_ec_point_not_on_the_curve_is_refused() -> None:
    doc = document(entry("ec", EC, "jwk"))
    doc["keys"][0]["jwk"]["y"] = doc["keys"][0]["jwk"]["x"]
    with pytest.raises(KeySetError, match="P-256"):
        KeySet.from_document(doc)


def test_p384_key_is_refused_for_p256_alg() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    doc = document(key_entry("p384", other, not_before=T0, not_after=T0 + 1))
    doc["keys"][0]["alg"] = "ecdsa-p256-sha256"
    with pytest.raises(KeySetError, match="does not match"):
        KeySet.from_document(doc)


@pytest.mark.parametrize("text", ["", "{", "[]", '{"keys": 1}', "x" * 300_000])
def test_not_json_or_wrong_shape(text: str) -> None:
    with pytest.raises(KeySetError):
        KeySet.from_json(text)


def test_pinned_key_checks_its_own_invariants() -> None:
    with pytest.raises(KeySetError):
        PinnedKey("k", "ed25519", EC.public_key(), T0, T0 + 1)
    with pytest.raises(KeySetError):
        PinnedKey("k", "ed25519", ED.public_key(), T0, T0)


def test_error_messages_name_the_field_and_never_the_key() -> None:
    doc = document(entry("ed", ED, "jwk"))
    doc["keys"][0]["jwk"]["d"] = "secret-material-AAAA"
    with pytest.raises(KeySetError) as caught:
        KeySet.from_document(doc)
    assert "keys[0].jwk" in str(caught.value)
    assert "secret-material" not in str(caught.value)
