"""Everything that touches relay sockets: the Hybrid Connection listener and its settings.

``backoff`` paces reconnects, ``handlers`` is the seam to the rest of the agent and ``listener``
runs the control channels. How outbound connections reach the internet (the customer's proxy) is
decided by :mod:`gateway.outbound.proxy`, shared with the control-plane client.
"""
