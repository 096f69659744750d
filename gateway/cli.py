"""Command-line entry point: ``gateway VERB ...`` and ``python -m gateway VERB ...``.

Bare ``gateway`` prints the verbs; a mistyped verb gets a did-you-mean; ``gateway --version``
prints the version. Shell completion comes from argcomplete (``gateway completion SHELL`` prints
the script for bash, zsh or fish): it completes from this very parser, so it never drifts from
the verbs and options.

Exit codes shared by every verb:

* 0 - success (for ``explain``: the request would be allowed)
* 1 - the configuration or another input is invalid, or the operation failed
* 2 - usage error (unknown verb, bad flag, no verb)
* 3 - ``explain``: the request would be denied
* 130 - interrupted (Ctrl-C)

Verbs with exit codes of their own say so in their ``--help``: ``diff`` (10 widened, 11
narrowed or neutral) and ``run`` (4 identity, 5 could not start).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.suggest import closest

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE: what a shell reports for a program whose reader went away (`... | head`).
EXIT_BROKEN_PIPE = 141

# Verb modules under gateway.commands, in the order `gateway --help` lists them.
COMMANDS: tuple[str, ...] = (
    "init",
    "validate",
    "explain",
    "policy_test",
    "diff",
    "replay",
    "sign",
    "verify_config",
    "audit",
    "run",
    "register",
    "status",
    "check",
    "docs",
    "schema",
    "completion",
    "version",
    "demo",
    "dev",
)

Choices = dict[str, argparse.ArgumentParser]


def _root() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    """The top-level parser and its (still empty) set of verbs."""
    parser = argparse.ArgumentParser(
        prog="gateway",
        description=(
            "Policy-enforcing on-premises gateway agent for Azure Relay Hybrid Connections."
        ),
        epilog="Run `gateway VERB --help` for a verb's options, and `gateway completion --help` "
        "for tab completion in bash, zsh or fish.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"gateway {__version__}",
        help="print the version and exit",
    )
    return parser, parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")


def _build(
    argv: Sequence[str], *, named_only: bool = False
) -> tuple[argparse.ArgumentParser, Choices, Choices]:
    """The parser, its verbs and (when ``argv`` starts with ``dev``) the dev tools; with
    ``named_only``, when ``argv`` names a verb, that verb alone."""
    # A command line that names a verb needs that verb's parser only. Importing every verb
    # module would load what the others work with (policy testing, GitOps diff and replay, the
    # LDAP explainer, diagnostics) into a process that never uses it: for `gateway run`, a
    # long-running agent, that is memory held for its whole life (issue 13: idle RSS).
    verb = argv[0] if argv and not argv[0].startswith("-") else ""
    module_name = verb.replace("-", "_")
    # (Not while completing: the word may be a verb being typed, and others may share its start.)
    if named_only and module_name in COMMANDS and module_name != "dev":
        parser, subparsers = _root()
        importlib.import_module(f"gateway.commands.{module_name}").register(subparsers)
        if verb in subparsers.choices:
            return parser, dict(subparsers.choices), {}
        # The module registers its verb under another name: build the whole parser instead.
    parser, subparsers = _root()
    tools: Choices = {}
    for name in COMMANDS:
        module = importlib.import_module(f"gateway.commands.{name}")
        if name == "dev":
            tools = module.register(subparsers, with_tools=list(argv[:1]) == ["dev"])
        else:
            module.register(subparsers)
    return parser, dict(subparsers.choices), tools


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser with every verb registered (the ``dev`` tools only if ``argv`` asks for them)."""
    return _build(argv)[0]


def _unknown(kind: str, word: str, known: Sequence[str], usage: str) -> int:
    print(f"gateway: unknown {kind} {word!r}", file=sys.stderr)
    close = closest(word, known)
    if close is not None:
        print(f"did you mean {close!r}?", file=sys.stderr)
    print(f"run `{usage}` for the list", file=sys.stderr)
    return EXIT_USAGE


def _misspelt(arguments: list[str], verbs: Choices, tools: Choices) -> int | None:
    """Report an unknown verb or dev tool with a suggestion; None when the words are known."""
    if arguments and not arguments[0].startswith("-") and arguments[0] not in verbs:
        return _unknown("verb", arguments[0], list(verbs), "gateway --help")
    if (
        arguments[:1] == ["dev"]
        and len(arguments) > 1
        and not arguments[1].startswith("-")
        and arguments[1] not in tools
    ):
        return _unknown("dev tool", arguments[1], list(tools), "gateway dev --help")
    return None


def _completion_words() -> list[str]:
    """The words being completed (argcomplete runs the program with them in ``COMP_LINE``)."""
    import shlex  # only while a shell completes (as argcomplete itself): not in a running gateway

    try:
        return shlex.split(os.environ.get("COMP_LINE", ""))[1:]
    except ValueError:  # an unfinished quote while typing
        return os.environ.get("COMP_LINE", "").split()[1:]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen verb; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    completing = argv is None and "_ARGCOMPLETE" in os.environ
    if completing:
        parser, verbs, tools = _build(_completion_words())
    else:
        parser, verbs, tools = _build(arguments, named_only=True)
    if completing:
        import argcomplete  # only a shell asking for completions needs it

        argcomplete.autocomplete(parser)  # prints the candidates and exits the process
    misspelt = _misspelt(arguments, verbs, tools)
    if misspelt is not None:
        return misspelt
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 for --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.verb is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.handler(args)
        # What is still buffered goes now, where a reader that went away is handled below.
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read the output stopped reading (`gateway dev send ... | head`): stop as a shell
        # tool does, without a traceback. Standard output now points at /dev/null, so the
        # interpreter's last flush of what is still buffered cannot fail again on the way out
        # (the Python documentation's note on SIGPIPE).
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        return EXIT_BROKEN_PIPE
    return code
