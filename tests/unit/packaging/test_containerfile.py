"""The container recipe, checked for the essentials (no container engine here can build it)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CONTAINERFILE = ROOT / "packaging" / "container" / "Containerfile"


@dataclass
class Stage:
    """One ``FROM`` stage: its base image and instructions as (KEYWORD, arguments)."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """Arguments of every instruction with ``keyword``."""
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> list[Stage]:
    """Split a Containerfile into stages (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the file ends in a continuation line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append(Stage(base=args.split()[0]))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list)
    assert all(isinstance(item, str) for item in value)
    return value


STAGES = parse(CONTAINERFILE.read_text(encoding="utf-8"))
RUNTIME = STAGES[-1]


def pinned(image: str) -> bool:
    """A base image named by digest, or by an explicit tag other than ``latest``."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and not name.endswith(":latest")


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("debian", False),
        ("debian:latest", False),
        ("registry:5000/debian", False),
        ("debian:12-slim", True),
        ("registry:5000/debian:12", True),
        ("debian@sha256:" + "0" * 64, True),
    ],
)
def test_pinning_rule(image: str, expected: bool) -> None:
    assert pinned(image) is expected


def test_every_base_image_is_pinned() -> None:
    assert len(STAGES) == 2
    for stage in STAGES:
        assert pinned(stage.base), stage.base


def test_nothing_is_fetched_with_add() -> None:
    for stage in STAGES:
        for args in stage.all("ADD"):
            assert not re.search(r"\b(?:https?|ftp)://", args), args


def test_runtime_user_is_not_root() -> None:
    [user] = RUNTIME.all("USER")
    name = user.split(":")[0]
    assert name not in ("root", "0", "")
    assert name.isdigit(), "a numeric uid lets the runtime check non-root without /etc/passwd"


def test_entrypoint_and_healthcheck_need_no_shell() -> None:
    [entrypoint] = RUNTIME.all("ENTRYPOINT")
    assert _exec_form(entrypoint) == ["/opt/gateway/bin/gateway"]
    assert _exec_form(RUNTIME.all("CMD")[0]) == ["run"]
    [healthcheck] = RUNTIME.all("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--timeout=" in options
    assert _exec_form(command) == ["/opt/gateway/bin/gateway", "status"]
    # The runtime image has no /bin/sh, so it cannot RUN anything.
    assert RUNTIME.all("RUN") == []


def test_state_directory_is_a_volume_and_nothing_is_exposed() -> None:
    assert _exec_form(RUNTIME.all("VOLUME")[0]) == ["/var/lib/gateway"]
    assert RUNTIME.all("EXPOSE") == []
    assert RUNTIME.all("STOPSIGNAL") == ["SIGTERM"]


def test_copied_paths_exist_in_the_build_context() -> None:
    build = STAGES[0]
    for args in build.all("COPY"):
        *sources, _destination = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
