"""Adversarial configuration input never crashes the loader: it loads or it lists problems."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import load
from gateway.errors import ConfigError, Problem
from tests.unit.config.conftest import BASE

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_bytes(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gateway.yaml"
        path.write_bytes(content)
        (Path(directory) / "policies").mkdir()
        problems: list[Problem] | None = None
        try:
            load(path, env={})
        except ConfigError as exc:
            problems = exc.problems
        assert problems is None or problems, "a ConfigError must list at least one problem"
        for problem in problems or []:
            assert problem.code
            assert problem.render()


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes(content: bytes) -> None:
    load_bytes(content)


YAML_TOKENS = st.sampled_from(
    [
        "a",
        ":",
        " ",
        "\n",
        "-",
        "[",
        "]",
        "{",
        "}",
        "&x",
        "*x",
        "!!str",
        "'",
        '"',
        "#",
        "?",
        ",",
        "|",
        ">",
        "%",
        "@",
        "`",
        "\t",
        "<<",
        "~",
        "1",
        "0x1",
        "yes",
        "\ufeff",
    ]
)


@SETTINGS
@given(st.lists(YAML_TOKENS, max_size=60))
def test_yaml_shaped_noise(tokens: list[str]) -> None:
    load_bytes("".join(tokens).encode())


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.text(max_size=12),
    st.sampled_from(["'0443'", "[]", "{}", "[GET]", "*", "off", "/api/../x", "1e400", "-.inf"]),
)


@SETTINGS
@given(st.integers(0, BASE.count("\n") - 1), VALUES)
def test_one_value_replaced_in_a_valid_file(line_number: int, value: object) -> None:
    lines = BASE.splitlines()
    line = lines[line_number]
    if ":" in line:
        key = line.split(":", 1)[0]
        lines[line_number] = f"{key}: {value}"
    else:
        lines[line_number] = f"{line} {value}"
    load_bytes(("\n".join(lines) + "\n").encode())
