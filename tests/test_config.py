"""normcore's settings: environment variables read once at import, with clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import normcore
from normcore._plumbing import config


def _import_normcore(**env: str) -> subprocess.CompletedProcess:
    code = (
        "import normcore\n"
        "from normcore._plumbing.config import settings\n"
        "print(settings.reference_path, settings.numba, settings.num_threads)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NORMCORE_")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env}
    )


def test_defaults_without_variables():
    done = _import_normcore()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "None"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"NORMCORE_REFERENCE_PATH": "yes"}, ["True", "True", "None"]),
        ({"NORMCORE_NUMBA": " ON "}, ["False", "True", "None"]),
        ({"NORMCORE_NUMBA": "0", "NORMCORE_NUM_THREADS": "3"}, ["False", "False", "3"]),
        ({"NORMCORE_NUMBA": " Off"}, ["False", "False", "None"]),
        ({"NORMCORE_REFERENCE_PATH": "", "NORMCORE_NUMBA": ""}, ["False", "True", "None"]),
    ],
)
def test_variables_are_parsed_at_import(env, expected):
    done = _import_normcore(**env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("NORMCORE_NUMBA", "maybe", "one of 1, true, yes, on"),
        ("NORMCORE_REFERENCE_PATH", "2", "one of 1, true, yes, on"),
        ("NORMCORE_NUM_THREADS", "0", "a whole number >= 1"),
        ("NORMCORE_NUM_THREADS", "two", "a whole number >= 1"),
        ("NORMCORE_NUM_THREADS", "\u00b2", "a whole number >= 1"),
    ],
)
def test_a_value_not_understood_fails_at_import_naming_the_variable(name, value, accepted):
    done = _import_normcore(**{name: value})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: the environment variable")
    assert f"{name}={value!r} is not understood" in last and accepted in last


def test_from_environment_reads_only_normcores_variables_and_omp_num_threads():
    parsed = config.from_environment({"NORMCORE_NUM_THREADS": "2", "OTHER": "x"})
    assert parsed == config.Settings(reference_path=False, numba=True, num_threads=2)
    parsed = config.from_environment({"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "1"})
    assert parsed == config.Settings(num_threads=None, omp_num_threads=3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1),
        (" 4 ", 4),
        ("+4", 4),
        ("4,2", 4),
        ("0", None),
        ("", None),
        ("four", None),
        ("-2", None),
        ("\u00b2", None),  # a superscript two: str.isdigit, but not a number to int()
        ("\u0663", None),  # an Arabic-Indic three
    ],
)
def test_omp_num_threads_is_read_where_openmp_would_and_never_raises(value, expected):
    assert config.from_environment({"OMP_NUM_THREADS": value}).omp_num_threads == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OMP_NUM_THREADS": "1"}, "1"),  # what torchrun sets for each process
        ({"OMP_NUM_THREADS": "1", "NORMCORE_NUM_THREADS": "3"}, "3"),  # normcore's own wins
        ({"OMP_NUM_THREADS": "10000"}, str(os.cpu_count() or 1)),  # at most every core
        ({"OMP_NUM_THREADS": "many"}, str(os.cpu_count() or 1)),  # not ours: not used
    ],
)
def test_the_kernels_threads_follow_omp_num_threads(env, expected):
    code = (
        "import normcore\n"
        "from normcore.backends import _numpy_kernels as k\n"
        "print(k.most_threads(), k.threads_for(2**24))"
    )
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NORMCORE_") and k != "OMP_NUM_THREADS"
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected, expected]


def test_reference_path_needs_a_bool():
    with (
        pytest.raises(TypeError, match=r"enabled must be True or False, got str"),
        normcore.reference_path("yes"),
    ):
        pass
    assert not normcore.using_reference_path()
