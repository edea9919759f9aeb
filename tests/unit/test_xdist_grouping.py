"""The suite relies on ``--dist loadgroup``: one corpus stack and one user stack per run, not one per worker.

pytest 9.2 silently broke xdist's grouping (pytest-xdist#1386: the ``@group`` nodeid suffix no longer
takes effect), which made ``make test`` start every shared stack on both workers. pytest is pinned
below 9.2 for that; this test fails if an upgrade brings the breakage back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GROUPED = """
import os
import pathlib
import pytest

pytestmark = pytest.mark.xdist_group("shared")


@pytest.mark.parametrize("n", range(6))
def test_member(n):
    out = pathlib.Path(os.environ["GROUP_OUT"])
    (out / f"{n}-{os.environ['PYTEST_XDIST_WORKER']}").touch()


@pytest.mark.parametrize("n", range(6))
def test_loose(n):
    pass
"""


def test_loadgroup_keeps_a_group_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "workers").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_grouped.py"),
        ],
        cwd=tmp_path,
        env={**os.environ, "GROUP_OUT": str(tmp_path / "workers")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ran = sorted(p.name for p in (tmp_path / "workers").iterdir())
    assert len(ran) == 6, ran
    assert len({name.split("-", 1)[1] for name in ran}) == 1, f"one group spread over workers: {ran}"
