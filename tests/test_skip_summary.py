"""The root conftest.py's terminal summary: skipped tests counted by reason."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent

DEMO = textwrap.dedent(
    """
    import pytest

    @pytest.mark.parametrize("n", range(3))
    @pytest.mark.skip(reason="cupy is not installed")
    def test_marked(n):
        pass

    def test_skipped_inside():
        pytest.skip("no CUDA device")

    @pytest.mark.parametrize("n", range(2))
    def test_skipped_by_parameter(n):
        pytest.skip("zebra reason")

    def test_passes():
        pass

    def test_fails():
        assert False
    """
)


def test_skips_are_counted_by_reason_most_frequent_first(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_demo.py").write_text(DEMO)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfE", "test_demo.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if " skipped, by reason " in line)
    assert lines[header + 1 : header + 4] == [
        "3 skipped: cupy is not installed",
        "2 skipped: zebra reason",
        "1 skipped: no CUDA device",
    ]
    assert "FAILED test_demo.py::test_fails" in done.stdout  # -rfE's summary is kept
    assert "1 failed, 1 passed, 6 skipped" in lines[-1]


def test_no_section_without_skips(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_demo.py").write_text("def test_passes():\n    pass\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_demo.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout
    assert "by reason" not in done.stdout
