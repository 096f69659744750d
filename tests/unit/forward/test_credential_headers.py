"""The header step where a credential is injected: which one, and what the SaaS may not send."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.model import Credential, Operation, Target
from gateway.forward.headers import credential_name, refuse_saas_credentials
from gateway.forward.rejections import RequestRejected

KEY = Credential.model_validate({"header": {"name": "X-API-Key", "value": {"env": "K"}}})
BEARER = Credential.model_validate({"bearer": {"token": {"env": "T"}}})


def _target(**extra: object) -> Target:
    return Target.model_validate(
        {
            "scheme": "https",
            "host": "10.1.2.3",
            "operations": [{"name": "read", "methods": ["GET"], "paths": ["/api/*"]}],
            **extra,
        }
    )


def test_operation_credential_overrides_the_target_and_tcp_has_none() -> None:
    target = _target(credential="erp")
    plain = target.operations[0]
    own = Operation.model_validate(
        {"name": "x", "methods": ["GET"], "paths": ["/x"], "credential": "other"}
    )
    assert credential_name(target, plain) == "erp"
    assert credential_name(target, own) == "other"
    assert credential_name(_target(), plain) is None
    tcp = Target.model_validate({"scheme": "tcp", "host": "10.1.2.3", "port": 636})
    assert credential_name(tcp, None) is None
    # The loader refuses a credential on a tcp target; the header step does not rely on that.
    named = Target.model_validate(
        {"scheme": "tcp", "host": "10.1.2.3", "port": 636, "credential": "erp"}
    )
    assert credential_name(named, None) is None


@pytest.mark.parametrize(
    ("credential", "name"),
    [
        (BEARER, "authorization"),
        (BEARER, "proxy-authorization"),
        (BEARER, "cookie"),
        (KEY, "x-api-key"),
        (KEY, "authorization"),
    ],
)
def test_credential_headers_from_the_saas_are_refused(credential: Credential, name: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        refuse_saas_credentials(credential, [("accept", "*/*"), (name, "saas-secret-value")])
    assert (caught.value.code, caught.value.status) == ("saas_credential_refused", 400)
    assert name in str(caught.value)
    assert "saas-secret-value" not in str(caught.value)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["accept", "content-type", "x-request-id", "if-match", "range"]),
            st.text(alphabet="abc123 ", max_size=20),
        ),
        max_size=10,
    )
)
def test_other_headers_pass(headers: list[tuple[str, str]]) -> None:
    refuse_saas_credentials(KEY, headers)
    refuse_saas_credentials(BEARER, headers)
