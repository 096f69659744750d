"""Exceptions raised by the identity layer, each with a stable machine-readable ``code``.

Codes are part of the operator-facing contract (logs, ``gateway status``, exit messages) and of the
control-plane API (RFC 9457 problem ``type`` suffixes). Messages are written for an operator and
never contain a password, a passphrase, a private key or a SAS token.

Local codes:

* ``not_registered`` - the state directory holds no committed identity.
* ``already_registered`` - registration refused because an identity exists (use ``force``).
* ``unsafe_permissions`` - a state file or the state directory is readable or writable by others,
  or owned by another user.
* ``symlink_refused`` - a state file or the state directory is a symbolic link.
* ``corrupt_file`` - a state file is truncated, oversized or not in the expected format.
* ``wrong_passphrase`` / ``passphrase_required`` / ``passphrase_unexpected`` - the private key
  cannot be decrypted with what was supplied.
* ``key_certificate_mismatch`` - the certificate does not belong to the private key.
* ``certificate_invalid`` - subject, extended key usage, chain or validity is wrong.
* ``client_certificate_expired`` - the client certificate is outside its validity period; no
  connection is attempted.
* ``certificate_not_yet_valid`` - the certificate's validity starts after the local time: the
  local clock is behind (the control plane backdates what it issues).
* ``ca_mismatch`` - the control plane returned a CA other than the one pinned by the operator.
* ``invalid_gateway_id`` - the gateway id does not match the documented pattern.
* ``unsupported_platform`` - the state directory checks need POSIX ownership and modes.

Control-plane codes (:class:`ControlPlaneError`) are listed in ``gateway.identity.controlplane``.
"""

from __future__ import annotations

from gateway.errors import GatewayError


class IdentityError(GatewayError):
    """The gateway identity cannot be created, loaded or used; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"


class ControlPlaneError(IdentityError):
    """A control-plane call failed; ``status`` is the HTTP status when one was received."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(code, message)
        self.status = status
