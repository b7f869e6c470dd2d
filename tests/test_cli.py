"""The ``normcore`` command line: options every command shares."""

from __future__ import annotations

import subprocess
import sys

import pytest

import normcore
from normcore.cli import main


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"normcore {normcore.__version__}"


def test_version_from_python_dash_m():
    done = subprocess.run(
        [sys.executable, "-m", "normcore", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == f"normcore {normcore.__version__}"
