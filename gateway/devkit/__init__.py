"""Development kit: local stand-ins for the systems the gateway talks to.

Used by ``gateway demo``, ``gateway dev ...``, the tests and the benchmarks. Production code never
imports this package; ``gateway.commands.dev`` loads it lazily, only when a ``dev`` verb runs.
"""
