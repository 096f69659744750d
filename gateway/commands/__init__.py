"""One module per CLI verb.

Each module exposes ``register(subparsers)``, which adds its parser and sets ``handler`` to a
function taking the parsed arguments and returning the process exit code. ``gateway.cli`` lists
the modules in ``COMMANDS``; adding a verb is one module plus one entry there.
"""
