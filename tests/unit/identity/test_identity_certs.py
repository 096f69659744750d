"""Keys, CSRs, certificate validation, renewal timing and expiry states."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devkit.controlplane import DevCA
from gateway.identity.certs import (
    certificate_health,
    parse_ca_certificate,
    parse_certificate_chain,
    renewal_time,
    validate_client_certificate,
)
from gateway.identity.errors import IdentityError
from gateway.identity.keys import (
    build_csr,
    gateway_uri,
    generate_private_key,
    load_private_key,
    serialize_private_key,
    validate_gateway_id,
)
from tests.unit.identity.helpers import custom_leaf, issue_for, new_key

CA = DevCA("Unit CA")
OTHER_CA = DevCA("Other CA")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("gateway_id", ["gw-1", "a", "0", "x" * 63, "agent-1-dc2"])
def test_valid_gateway_ids(gateway_id: str) -> None:
    assert validate_gateway_id(gateway_id) == gateway_id


@pytest.mark.parametrize(
    "gateway_id", ["", "-gw", "gw-", "GW1", "gw_1", "gw.1", "x" * 64, "gw 1", "gw/1", "gw\n"]
)
def test_invalid_gateway_ids(gateway_id: str) -> None:
    with pytest.raises(IdentityError) as info:
        validate_gateway_id(gateway_id)
    assert info.value.code == "invalid_gateway_id"


@given(st.text(max_size=80))
def test_gateway_id_check_accepts_exactly_the_documented_pattern(text: str) -> None:
    expected = re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", text) is not None
    try:
        validate_gateway_id(text)
    except IdentityError:
        assert not expected
    else:
        assert expected


@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "rsa-3072"])
def test_csr_names_the_gateway_and_is_signed_by_the_key(algorithm: str) -> None:
    key = generate_private_key(algorithm)  # type: ignore[arg-type]
    csr = x509.load_pem_x509_csr(build_csr(key, "gw-7"))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-7"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [gateway_uri("gw-7")]
    assert csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_default_key_is_p256() -> None:
    key = generate_private_key()
    assert key.key_size == 256


def test_encrypted_key_round_trip_and_wrong_passphrase_message() -> None:
    key = new_key()
    pem = serialize_private_key(key, b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in pem
    assert load_private_key(pem, b"correct horse", source="k").private_numbers() == (
        key.private_numbers()
    )
    with pytest.raises(IdentityError) as info:
        load_private_key(pem, b"battery staple", source="client-1.key")
    assert info.value.code == "wrong_passphrase"
    assert "battery staple" not in str(info.value)
    assert "client-1.key" in str(info.value)
    with pytest.raises(IdentityError) as missing:
        load_private_key(pem, None, source="k")
    assert missing.value.code == "passphrase_required"


def test_plain_key_with_a_passphrase_is_refused() -> None:
    pem = serialize_private_key(new_key(), None)
    with pytest.raises(IdentityError) as info:
        load_private_key(pem, b"secret", source="k")
    assert info.value.code == "passphrase_unexpected"


def test_a_proper_certificate_is_accepted() -> None:
    key = new_key()
    cert = issue_for(CA, key)
    validate_client_certificate(
        [cert], private_key=key, ca=CA.certificate, gateway_id="gw-1", now=_now()
    )


def test_certificate_for_another_key_is_rejected() -> None:
    cert = issue_for(CA, new_key())
    with pytest.raises(IdentityError) as info:
        validate_client_certificate(
            [cert], private_key=new_key(), ca=CA.certificate, gateway_id="gw-1", now=_now()
        )
    assert info.value.code == "key_certificate_mismatch"


def test_certificate_from_another_ca_is_rejected() -> None:
    key = new_key()
    cert = issue_for(OTHER_CA, key)
    with pytest.raises(IdentityError) as info:
        validate_client_certificate(
            [cert], private_key=key, ca=CA.certificate, gateway_id="gw-1", now=_now()
        )
    assert info.value.code == "certificate_invalid"
    assert "pinned CA" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"cn": "gw-2"}, "CN"),
        ({"uri": "urn:empowerid:gateway:gw-2"}, "SAN URI"),
        ({"usage": ExtendedKeyUsageOID.SERVER_AUTH}, "client authentication"),
        ({"usage": None}, "client authentication"),
    ],
)
def test_subject_san_and_eku_are_enforced(overrides: dict[str, object], fragment: str) -> None:
    key = new_key()
    cert = custom_leaf(CA, key, **overrides)  # type: ignore[arg-type]
    with pytest.raises(IdentityError) as info:
        validate_client_certificate(
            [cert], private_key=key, ca=CA.certificate, gateway_id="gw-1", now=_now()
        )
    assert info.value.code == "certificate_invalid"
    assert fragment in str(info.value)


def test_expired_and_future_certificates_are_rejected() -> None:
    key = new_key()
    start = _now() - dt.timedelta(hours=2)
    cert = issue_for(CA, key, not_before=start, not_after=start + dt.timedelta(hours=1))
    for moment, code in (
        (start + dt.timedelta(hours=1), "client_certificate_expired"),
        # Before its start: the local clock is behind; "expired" would send the operator to
        # re-register, which cannot help.
        (start - dt.timedelta(seconds=1), "certificate_not_yet_valid"),
    ):
        with pytest.raises(IdentityError) as info:
            validate_client_certificate(
                [cert], private_key=key, ca=CA.certificate, gateway_id="gw-1", now=moment
            )
        assert info.value.code == code


def test_renewal_at_two_thirds_and_health_states() -> None:
    start = (_now() - dt.timedelta(minutes=5)).replace(microsecond=0)
    cert = issue_for(CA, new_key(), not_before=start, not_after=start + dt.timedelta(hours=3))
    assert renewal_time(cert) == start + dt.timedelta(hours=2)
    second = dt.timedelta(seconds=1)
    cases = [
        (start - second, "not_yet_valid"),
        (start, "valid"),
        (start + dt.timedelta(hours=2) - second, "valid"),
        (start + dt.timedelta(hours=2), "renewal_due"),
        (start + dt.timedelta(hours=2.7) - second, "renewal_due"),
        (start + dt.timedelta(hours=2.7), "alert"),
        (start + dt.timedelta(hours=3) - second, "alert"),
        (start + dt.timedelta(hours=3), "expired"),
    ]
    for moment, state in cases:
        health = certificate_health(cert, moment)
        assert health.state == state, moment
        assert health.usable == (state not in ("expired", "not_yet_valid"))


def test_every_truncation_of_a_certificate_is_a_clear_error() -> None:
    pem = issue_for(CA, new_key()).public_bytes(serialization.Encoding.PEM)
    # A cut anywhere before the END marker is complete must never parse as a certificate.
    end_complete = pem.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")
    for cut in range(end_complete):
        with pytest.raises(IdentityError) as info:
            parse_certificate_chain(pem[:cut], source="client-1.crt")
        assert info.value.code == "corrupt_file"
        assert "client-1.crt" in str(info.value)


def test_a_cut_off_second_certificate_is_detected() -> None:
    pem = issue_for(CA, new_key()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(IdentityError) as info:
        parse_certificate_chain(pem + pem[:100], source="chain")
    assert info.value.code == "corrupt_file"


def test_chain_length_and_size_are_bounded() -> None:
    pem = CA.pem
    assert len(parse_certificate_chain(pem * 8, source="c")) == 8
    for data in (pem * 9, b"x" * (64 * 1024 + 1)):
        with pytest.raises(IdentityError) as info:
            parse_certificate_chain(data, source="c")
        assert info.value.code == "corrupt_file"


def test_ca_file_must_hold_one_ca_certificate() -> None:
    assert parse_ca_certificate(CA.pem, source="ca").subject == CA.certificate.subject
    leaf_pem = issue_for(CA, new_key()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(IdentityError) as not_ca:
        parse_ca_certificate(leaf_pem, source="ca")
    assert not_ca.value.code == "certificate_invalid"
    with pytest.raises(IdentityError) as two:
        parse_ca_certificate(CA.pem + OTHER_CA.pem, source="ca")
    assert two.value.code == "corrupt_file"


@settings(max_examples=200)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_escape_as_another_exception(data: bytes) -> None:
    with pytest.raises(IdentityError) as info:
        parse_certificate_chain(data, source="c")
    assert info.value.code == "corrupt_file"


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_key_bytes_give_a_clear_error(data: bytes) -> None:
    with pytest.raises(IdentityError) as info:
        load_private_key(data, None, source="k")
    assert info.value.code in ("corrupt_file", "passphrase_required")
