"""Sans-IO core of the Azure Relay Hybrid Connections protocol (no sockets, no asyncio).

Protocol facts: ``hybrid-connections-protocol.md`` (cited below as "section N").

Control messages (``messages``)
    ``parse_command(data: str | bytes, *, max_size=65536) -> Command`` and
    ``encode_command(command: Command) -> str``. ``Command`` is one of the frozen dataclasses
    ``AcceptCommand(address, id, connect_headers, remote_endpoint)``,
    ``RequestCommand(id, request_target, method, request_headers, body, address, remote_endpoint)``,
    ``RendezvousRequestCommand(address, id)``,
    ``ResponseCommand(request_id, status_code, body, status_description, response_headers)``,
    ``RenewTokenCommand(token)``. Parsing raises only ``ProtocolError`` subclasses; a ``request``
    with a sound ``id`` and ``body`` flag but another bad field raises
    ``MalformedRequestError(field_error, request_id=..., body=...)``.

Channel state machines (``framing``)
    ``ListenerChannel(kind: SocketKind, *, check_address, limits=None, clock=time.monotonic)``:
    feed ``receive_frame(opcode, payload, fin=...)`` or ``receive_message(str | bytes)`` and
    ``receive_close(code, reason)``; each returns a list of events: ``AcceptReceived``,
    ``RequestReceived(command, body)``, ``MalformedRequestReceived(request_id, error)`` (answer
    400 where it arrived; its body was consumed), ``RendezvousRequested``,
    ``ProtocolViolation(error, fatal, request_id=None)``, ``ChannelClosed``. On ``fatal`` drop the
    connection; otherwise log, count, carry on. Tolerated defects are bounded by
    ``ChannelLimits(max_violations=32, violation_window=10.0)``: one more within the window is a
    fatal ``too_many_violations``. A request body over ``max_body_size`` is a fatal
    ``message_too_large`` violation whose ``request_id`` names the request (answer it 413 first);
    call ``receive_too_large()`` when the WebSocket library itself refused an oversize message.
    ``RelayChannel`` is the relay-side twin (``ResponseReceived``, ``TokenRenewalReceived``).
    Outgoing: ``choose_response_route(body_length, arrived_on=...) -> ResponseRoute``,
    ``response_frames(ResponseCommand, body) -> list[Frame]`` and ``BodyFramer`` for a body sent
    in pieces. Send a response's JSON and body frames under one per-socket lock (section 5.4).

SAS tokens (``sas``)
    ``create_token(resource, key_name, key, *, expiry=None, ttl=3600, clock=time.time) -> str``,
    ``resource_uri(namespace_host, entity_path) -> str``, ``parse_token(token) -> SasToken``,
    ``validate_token(token, *, keys, namespace_host, entity_path, clock) -> SasToken``.

Addresses (``addresses``)
    ``RelayEndpoint.parse("wss://ns.servicebus.windows.net")``, ``listen_url``, ``connect_url``,
    ``http_url``, ``reject_url(address, status_code, description)``,
    ``relay_domain_for(namespace_host)`` (``.servicebus.<cloud>`` or ``None``), and
    ``RendezvousPolicy(domain_suffix=".servicebus.windows.net", dev_endpoint=None,
    entity_path=None, extra_endpoints=()).check(address, command_id=None)`` raising
    ``BadRendezvousAddressError`` (code ``bad_rendezvous_address``). Pass ``policy.check`` as
    ``ListenerChannel``'s ``check_address``.

Listen refusals (``refusals``)
    ``classify_listen_refusal(status, reason) -> ListenRefusal(status, kind, reason,
    tracking_id)`` with ``kind`` a ``RefusalKind`` (``quota``, ``unauthorized``, ``not_found``,
    ``other``); ``clean_reason(text)`` makes relay text safe for a log line.

Errors (``errors``)
    ``HybridConnectionError`` (``.code``) > ``ProtocolError`` (``MessageTooLargeError``,
    ``MalformedMessageError``, ``UnknownCommandError``, ``MissingFieldError``,
    ``InvalidFieldError``, ``MalformedRequestError``, ``MalformedCommandError``,
    ``TooManyViolationsError``,
    ``UnexpectedFrameError``, ``UnexpectedCommandError``, ``BadRendezvousAddressError``) and
    ``TokenError`` (``MalformedTokenError``, ``UnknownKeyNameError``, ``BadSignatureError``,
    ``TokenExpiredError``, ``WrongResourceError``). Messages never contain tokens, keys or
    rendezvous addresses.
"""
