"""Everything that touches relay sockets: the Hybrid Connection listener and its outbound proxy.

``proxy`` decides how outbound connections reach the internet, ``backoff`` paces reconnects,
``handlers`` is the seam to the rest of the agent and ``listener`` runs the control channels.
"""
