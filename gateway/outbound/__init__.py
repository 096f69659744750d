"""Outbound connections to the relay and EmpowerID.

:mod:`gateway.outbound.proxy` is the one place that decides, per destination URL, whether such a
connection goes through the customer's HTTP proxy (``CONNECT``, Basic credentials, no-proxy list)
and builds the TLS context for relay connections. The relay listener and the control-plane client
both use it; on-prem targets never do.
"""
