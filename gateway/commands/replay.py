"""``gateway replay --decisions FILE... -c CANDIDATE.yaml``: what would a change do to real traffic?

Every recorded request of the decision logs (files, or directories of rotated logs) is decided
again by the chain of steps ``gateway run`` uses (:class:`gateway.pipeline.Chain`), under the
candidate configuration and its policy (``--policies DIR`` replaces the candidate's policy
directories). The report lists the requests that would be newly denied (the outage risk) and
newly allowed (the exposure), with counts per target and operation and the first examples.

The candidate's Rego is always evaluated by the embedded engine: an OPA server holds the policy
that is running, not the one under review.

Exit codes (the same convention as ``gateway diff``):

* 0 - no recorded request changes outcome
* 10 - some recorded request would be newly allowed: needs security review
* 11 - some would be newly denied, none newly allowed
* 1 - the candidate is invalid or a log cannot be read
* 2 - usage error
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

from gateway import config as gwconfig
from gateway.errors import ConfigError
from gateway.gitops.replay import (
    ReplayReport,
    read_records,
    render_json,
    render_markdown,
    render_text,
    replay,
)
from gateway.observability.auditchain import files_given
from gateway.pipeline import Chain
from gateway.policy.loader import build_engine

_RENDERERS = {"text": render_text, "json": render_json, "markdown": render_markdown}
EXIT_INVALID = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``replay`` verb."""
    parser = subparsers.add_parser(
        "replay",
        help="decide recorded requests again under a candidate configuration",
        description=(
            "Re-decide a decision log under a candidate configuration and policy. Exit 0: "
            "nothing changes; 10: requests newly allowed; 11: only newly denied; 1: invalid input."
        ),
    )
    parser.add_argument(
        "--decisions",
        nargs="+",
        required=True,
        metavar="FILE",
        help="decision log file or directory of rotated logs",
    )
    parser.add_argument(
        "-c", "--config", required=True, metavar="CANDIDATE", help="candidate gateway.yaml"
    )
    parser.add_argument(
        "--policies", metavar="DIR", help="policy directory to use instead of the candidate's"
    )
    parser.add_argument(
        "--format",
        choices=tuple(_RENDERERS),
        default="text",
        help="text (default), json for scripts, markdown for a merge-request comment",
    )
    parser.add_argument(
        "--examples", type=int, default=10, metavar="N", help="examples per kind of change"
    )
    parser.set_defaults(handler=run)


def candidate(path: str, policies: str | None) -> gwconfig.LoadedConfig:
    """The candidate configuration, its policy directories replaced by ``policies`` if given,
    evaluated by the embedded engine. Raises ConfigError."""
    loaded = gwconfig.load(path, env={}, check_host=False)
    update: dict[str, object] = {"engine": "embedded"}
    if policies is not None:
        update["directories"] = [str(Path(policies).resolve())]
    settings = loaded.config.policy.model_copy(update=update)
    return dataclasses.replace(loaded, config=loaded.config.model_copy(update={"policy": settings}))


async def replay_files(
    loaded: gwconfig.LoadedConfig, files: list[Path], *, examples: int = 10
) -> ReplayReport:
    """Replay ``files`` under ``loaded`` (see :func:`candidate`)."""
    engine = build_engine(loaded)
    await engine.start()
    try:
        return await replay(read_records(files), Chain(loaded.config, engine), examples=examples)
    finally:
        await engine.close()


def run(args: argparse.Namespace) -> int:
    """Load the candidate, replay the logs and print the report."""
    if args.examples < 0:
        print("--examples must not be negative", file=sys.stderr)
        return 2
    try:
        files = files_given(args.decisions)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    try:
        loaded = candidate(args.config, args.policies)
        report = asyncio.run(replay_files(loaded, files, examples=args.examples))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.render(), file=sys.stderr)
        print("gateway replay: the candidate is not valid; nothing replayed", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"cannot read a decision log: {exc}", file=sys.stderr)
        return EXIT_INVALID
    sys.stdout.write(_RENDERERS[args.format](report, args.config))
    return report.exit_code
