"""``gateway completion SHELL``: print the tab-completion script for bash, zsh or fish.

The script comes from argcomplete, which completes from the gateway's own argument parser (so
completions never drift from the verbs and options): on each TAB the shell runs ``gateway`` with
the command line in its environment and argcomplete answers with the candidates.

* bash: ``eval "$(gateway completion bash)"`` in ``~/.bashrc``;
* zsh: ``eval "$(gateway completion zsh)"`` in ``~/.zshrc`` (after ``compinit``);
* fish: ``gateway completion fish > ~/.config/fish/completions/gateway.fish``.
"""

from __future__ import annotations

import argparse

from argcomplete.shell_integration import shellcode

SHELLS = ("bash", "zsh", "fish")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``completion`` verb."""
    parser = subparsers.add_parser(
        "completion",
        help="print the tab-completion script for bash, zsh or fish",
        description='Print the tab-completion script. bash: eval "$(gateway completion bash)" in '
        '~/.bashrc; zsh: eval "$(gateway completion zsh)" in ~/.zshrc; fish: gateway '
        "completion fish > ~/.config/fish/completions/gateway.fish",
    )
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the script."""
    print(shellcode(["gateway"], shell=args.shell), end="")
    return 0
