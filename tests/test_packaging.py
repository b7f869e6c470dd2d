"""The wheel contains every package of the source tree (editable installs hide omissions)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _source_packages() -> set[str]:
    found = set()
    for source, name in ((ROOT / "normcore", "normcore"), (ROOT / "backends", "normcore.backends")):
        for init in source.rglob("__init__.py"):
            relative = init.parent.relative_to(source).parts
            found.add(".".join((name, *relative)))
    return found


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert _source_packages() == listed


def test_every_builtin_adapter_is_an_entry_point():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    points = config["project"]["entry-points"]["normcore.backends"]
    modules = {p.stem for p in (ROOT / "backends").glob("*.py") if not p.stem.startswith("_")}
    adapters = {m for m in modules if "adapter = " in (ROOT / "backends" / f"{m}.py").read_text()}
    assert set(points) == adapters
    assert all(value == f"normcore.backends.{name}:adapter" for name, value in points.items())


def test_normcore_torch_imports_every_usual_way():
    """``from normcore.torch import X``, ``import normcore.torch`` and attribute access."""
    pytest.importorskip("torch")
    code = (
        "from normcore.torch import LSTM\n"
        "import normcore.torch as nt\n"
        "import normcore\n"
        "assert normcore.torch is nt and nt.LSTM is LSTM\n"
        "import torch\n"
        "modules = [n for n, v in vars(nt).items() if isinstance(v, type)"
        " and issubclass(v, torch.nn.Module)]\n"
        "assert sorted(nt.__all__) == sorted(modules)\n"
        "print('ok')\n"
    )
    _prints_ok(code)


def test_import_leaves_the_recurrent_layers_and_optimizers_until_used():
    """``import normcore`` loads neither the recurrent code nor the optimizers (issue #16:
    about 15 ms of its import); each name loads on first use, every usual way."""
    code = (
        "import sys, normcore\n"
        "lazy = ['normcore._functional.rnn', 'normcore._modules.rnn', 'normcore.optim',\n"
        "        'normcore._functional.weight_norm', 'numpy', 'torch']\n"
        "assert not [m for m in lazy if m in sys.modules], [m for m in lazy if m in sys.modules]\n"
        "from normcore import LSTM, rnn_params\n"
        "from normcore._modules.rnn import LSTM as defined\n"
        "assert LSTM is defined and normcore.LSTM is defined\n"
        "import normcore.optim\n"
        "assert normcore.optim.SGD and {'LSTM', 'optim', 'torch'} <= set(dir(normcore))\n"
        "missing = [n for n in normcore.__all__ if getattr(normcore, n, None) is None]\n"
        "assert not missing, missing\n"
        "try:\n"
        "    normcore.not_a_name\n"
        "except AttributeError as error:\n"
        "    assert 'not_a_name' in str(error)\n"
        "print('ok')\n"
    )
    _prints_ok(code)


def _prints_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter (nothing imported yet); it must print ok."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
