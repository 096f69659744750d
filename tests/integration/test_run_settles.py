"""``gateway run`` freezes what start-up built once it is ready (:mod:`gateway.settle`).

The objects start-up leaves for the life of the process (modules, configuration models, the
revision) are moved out of the collector's full collections, which otherwise walk all of them
every time. This runs the real agent, serves a request after the freeze, and reads how many
objects the process held frozen when it stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .gatewayrun import registered_run

pytestmark = pytest.mark.asyncio

# ``gateway run`` as the command line starts it, writing its frozen-object count at exit.
LAUNCHER = (
    "import atexit, gc, os, sys\n"
    "def report():\n"
    "    with open(os.environ['FROZEN_FILE'], 'w', encoding='utf-8') as out:\n"
    "        out.write(str(gc.get_freeze_count()))\n"
    "atexit.register(report)\n"
    "from gateway.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
# The agent holds tens of thousands of objects from start-up; a process that froze nothing
# reports 0.
MANY = 10_000


async def test_gateway_run_freezes_its_start_up_objects(tmp_path: Path) -> None:
    frozen_file = tmp_path / "frozen.txt"
    async with (
        registered_run(
            tmp_path,
            "settle-gateway",
            env={"FROZEN_FILE": str(frozen_file)},
            program=("-c", LAUNCHER),
        ) as (stack, process),
        stack.saas() as saas,
    ):
        response, _ = await saas.request("GET", "erp", "/api/accounts/1")
        assert response.status == 200
    assert process.returncode == 0, (tmp_path / "gateway.log").read_text(errors="replace")
    assert int(frozen_file.read_text(encoding="utf-8")) >= MANY
