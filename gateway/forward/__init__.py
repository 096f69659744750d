"""From an authenticated relayed request to the on-prem target, and nothing else.

Every request and stream takes the same steps: select a target declared in gateway.yaml and
canonicalise the request (:mod:`gateway.forward.canonical`), apply the header policy
(:mod:`gateway.forward.headers`), and, once the policy has allowed it, dial only checked addresses
and forward exactly the canonical request. Each step refuses rather than repairs.
"""
