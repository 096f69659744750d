"""Policy decisions: the Rego input document, policy data, and the engines that decide.

* :mod:`gateway.policy.input` - the ``input`` document, built from a canonical request;
* :mod:`gateway.policy.data` - ``data.gateway``, the allow-list of gateway.yaml;
* :mod:`gateway.policy.loader` - finding and checking Rego modules, building the engine;
* :mod:`gateway.policy.engine` - the interface (``await engine.decide(input) -> Decision``);
* :mod:`gateway.policy.embedded` and :mod:`gateway.policy.opa` - the two engines;
* :mod:`gateway.policy.cache` - the decision cache; :mod:`gateway.policy.decision_log` - records;
* :mod:`gateway.policy.testing` - ``gateway policy-test``.

See docs/policy.md.
"""
