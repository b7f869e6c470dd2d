"""Regenerate the measured figures of docs/experiments.md: ``python docs/experiments_figures.py``.

Runs each experiment at its default settings (as ``normcore experiment NAME``
does, BLAS single-threaded), and writes into ``docs/experiments.md``, between
its ``<!-- figure: KEY -->`` ... ``<!-- /figure -->`` markers, the tables, the
wall-clock times and the platform line, and copies the plots to
``docs/_static/``. ``tests/test_experiments.py`` runs the NumPy experiments
again and checks that the page's tables are still what the code gives, so the
page cannot drift from the code; the times are this script's measurements
(they are not checked: they depend on the machine's load).

Needs the ``experiments`` extra and torch (the torch table).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
PAGE = DOCS / "experiments.md"
MARKER = re.compile(r"<!-- figure: (?P<key>[\w .-]+) -->(?P<body>.*?)<!-- /figure -->", re.S)
#: key -> (experiment, backend): the tables the page shows
TABLES = {
    "batch-size table": ("batch-size", "numpy"),
    "batch-size torch table": ("batch-size", "torch"),
    "rnn table": ("rnn", "numpy"),
    "invariance table": ("invariance", "numpy"),
}
#: experiment -> the plot's name in docs/_static
PLOTS = {
    "batch-size": "experiment-batch-size.png",
    "rnn": "lstm_digits.png",
    "invariance": "experiment-invariance.png",
}


def platform_key() -> str:
    """What a table depends on besides the code and the seed: libraries, kernels and BLAS.

    The form the page records (``<!-- figure: platform -->``); the test compares
    its tables only on a platform with the same key.
    """
    import numpy
    import sklearn
    import threadpoolctl

    # sorted: threadpoolctl lists the loaded BLAS libraries in the order they were loaded,
    # which differs between runs of the same platform (NumPy's and SciPy's OpenBLAS)
    blas = sorted(
        f"{info['internal_api']} {info['version']} ({info.get('architecture', '?')})"
        for info in threadpoolctl.threadpool_info()
        if info["user_api"] == "blas"
    )
    # The two kernel sets round differently, and training amplifies the difference.
    from normcore.backends.numpy import adapter

    if adapter.kernel_set() == "numba":
        import llvmlite.binding
        import numba

        # numba compiles for the host CPU: its vector width sets the order of the
        # kernels' sums (AVX-512 and AVX2 machines round differently)
        cpu = llvmlite.binding.get_host_cpu_name()
        kernels = f"numba {numba.__version__} kernels for {cpu}"
    else:
        kernels = "NumPy-only kernels"
    return (
        f"NumPy {numpy.__version__} / {kernels} / scikit-learn {sklearn.__version__} / "
        f"Python {platform.python_version()} / {', '.join(blas) or 'no BLAS'}"
    )


def section(page: str, key: str) -> str:
    """The text between the page's markers of ``key``."""
    for match in MARKER.finditer(page):
        if match["key"] == key:
            return "\n".join(line.strip() for line in match["body"].strip().splitlines())
    raise KeyError(f"docs/experiments.md has no <!-- figure: {key} --> marker")


def run(name: str, backend: str, out: Path) -> tuple[str, float]:
    """``(table, seconds)`` of one experiment at its defaults, its plot written to ``out``."""
    from normcore.experiments import _runner

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        table = _runner.run(name, backend=backend, out=str(out), show_progress=False)
    return table, time.perf_counter() - start


def main() -> None:
    page = PAGE.read_text()
    values = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, (name, backend) in TABLES.items():
            out = Path(tmp) / backend
            table, seconds = run(name, backend, out)
            values[key] = table
            values[f"{name} {backend} seconds"] = f"{seconds:.0f} s"
            print(f"{key}: {seconds:.1f} s", file=sys.stderr)
            if backend == "numpy":
                shutil.copy(out / f"{name}.png", DOCS / "_static" / PLOTS[name])
    today = datetime.date.today().isoformat()
    values["platform"] = f"{platform_key()}, on {today}"

    def replace(match: re.Match) -> str:
        key = match["key"]
        if key not in values:
            raise KeyError(f"nothing measures <!-- figure: {key} -->")
        if "\n" not in match["body"]:  # inline: a time, the platform
            return f"<!-- figure: {key} -->{values[key]}<!-- /figure -->"
        # a block keeps the marker's indentation (a table inside a list item)
        line_start = page.rfind("\n", 0, match.start()) + 1
        indent = page[line_start : match.start()]
        body = "\n".join(indent + line for line in values[key].splitlines())
        return f"<!-- figure: {key} -->\n{body}\n{indent}<!-- /figure -->"

    PAGE.write_text(MARKER.sub(replace, page))


if __name__ == "__main__":
    main()
