"""The records with their own ``__init__`` behave as the frozen dataclasses they were."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.hybridconnection.connection import RelayedRequest, RelayedResponse
from gateway.hybridconnection.framing import Frame, Opcode, RequestReceived
from gateway.hybridconnection.messages import RemoteEndpoint, RequestCommand
from gateway.hybridconnection.records import slot_setters

COMMAND = RequestCommand("r1", "/hc/a", "GET", {"Accept": "*/*"}, False, "ws://x", None)
RECORDS: list[tuple[type, tuple[object, ...]]] = [
    (Frame, (Opcode.TEXT, b"{}", False)),
    (RemoteEndpoint, ("10.0.0.7", 50123)),
    (RequestCommand, ("r1", "/hc/a", "GET", {}, True, None, RemoteEndpoint("10.0.0.7", 1))),
    (RequestReceived, (COMMAND, b"body")),
    (RelayedRequest, ("r1", "GET", "/a", "/hc/a", (("Accept", "*/*"),), b"x", ("10.0.0.7", 1))),
    (RelayedResponse, (201, "Made", (("X", "1"),), b"ok")),
]


@pytest.mark.parametrize(("cls", "values"), RECORDS)
def test_every_field_is_set_and_the_record_stays_frozen(
    cls: type, values: tuple[object, ...]
) -> None:
    names = [field.name for field in dataclasses.fields(cls)]
    positional = cls(*values)
    by_name = cls(**dict(zip(names, values, strict=True)))
    assert positional == by_name
    assert [getattr(positional, name) for name in names] == list(values)
    assert repr(positional).startswith(f"{cls.__name__}(")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(positional, names[0], values[0])
    changed = dataclasses.replace(positional, **{names[-1]: None})
    assert getattr(changed, names[-1]) is None
    assert changed != positional


def test_defaults_and_hashing_are_the_dataclass_ones() -> None:
    assert Frame(Opcode.BINARY, b"x").fin is True
    assert RelayedResponse(204) == RelayedResponse(204, "", (), b"")
    assert RelayedRequest("r", "GET", "/", "/hc", ()).remote is None
    assert RequestCommand("r", "/", "GET", {}, False).address is None
    assert hash(RemoteEndpoint("a", 1)) == hash(RemoteEndpoint("a", 1))
    assert len({Frame(Opcode.TEXT, b"a"), Frame(Opcode.TEXT, b"a")}) == 1


def test_setters_must_name_every_field_in_order() -> None:
    with pytest.raises(TypeError, match="fields are"):
        slot_setters(RemoteEndpoint, "port", "address")
    with pytest.raises(TypeError, match="fields are"):
        slot_setters(RemoteEndpoint, "address")
