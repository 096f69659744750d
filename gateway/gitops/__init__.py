"""GitOps support: semantic permission diffs and signed, rollback-proof configuration.

* :mod:`gateway.gitops.diff` - what a change to gateway.yaml grants or takes away, in plain words.
* :mod:`gateway.gitops.sources` - reading a side of a diff from a file or a Git revision.
* :mod:`gateway.gitops.signing` - Ed25519 detached signatures over the configuration and its
  policy files, and the agent's verification with anti-rollback state.
"""
