"""The ``normcore-api`` directive: an API reference generated from a module's ``__all__``.

``normcore.__all__`` is the one list of public names. A new public function
or class appears in the reference by being exported there: names are grouped
by the module that defines them, each group titled with the first line of
that module's docstring, and documented with autodoc (numpydoc renders the
docstrings).

Usage, in a reStructuredText page::

    .. normcore-api:: normcore
"""

from __future__ import annotations

import importlib
import inspect
import sys

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

# Reading order of the reference: what users call first, extension points last.
# A module not listed here (a new one) comes after the listed ones.
_ORDER = (
    "normcore._functional.layer_norm",
    "normcore._functional.batch_norm",
    "normcore._functional.group_norm",
    "normcore._functional.moments",
    "normcore._functional.weight_norm",
    "normcore._functional.rnn",
    "normcore._functional.rnn_params",
    "normcore._modules.layer_norm",
    "normcore._modules.batch_norm",
    "normcore._modules.group_norm",
    "normcore._modules.rnn",
    "normcore.optim",
    "normcore._plumbing.config",
    "normcore._modules.module",
    "normcore.adapter",
    "normcore.typing",
)


def _rank(module_name: str) -> tuple[int, str]:
    position = _ORDER.index(module_name) if module_name in _ORDER else len(_ORDER)
    return position, module_name


def _title(module_name: str) -> str:
    doc = inspect.getdoc(sys.modules[module_name]) or module_name
    return doc.splitlines()[0].rstrip(".")


def _entry(module, name: str) -> list[str]:
    obj = getattr(module, name)
    if inspect.ismodule(obj):  # a public submodule such as normcore.optim
        # Names it shares with the parent (normcore.Gradients) are documented there.
        shared = sorted(set(getattr(obj, "__all__", ())) & set(module.__all__))
        exclude = [f"   :exclude-members: {', '.join(shared)}"] if shared else []
        return [
            f".. automodule:: {obj.__name__}",
            "   :members:",
            *exclude,
            "",
            f".. currentmodule:: {module.__name__}",  # automodule changed it
            "",
        ]
    if not inspect.isclass(obj):
        return [f".. autofunction:: {name}", ""]
    options = ["   :members:"]
    from normcore import Module

    if issubclass(obj, Module):  # parameters(), state_dict(), ... come from the base class
        options.append("   :inherited-members:")
    return [f".. autoclass:: {name}", *options, ""]


def api_lines(module_name: str) -> list[str]:
    """Return the reStructuredText documenting every public name of ``module_name``."""
    module = importlib.import_module(module_name)
    groups: dict[str, list[str]] = {}
    for name in module.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(module, name)
        defining = (
            obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", module_name)
        )
        groups.setdefault(defining, []).append(name)
    lines = [f".. currentmodule:: {module_name}", ""]
    for defining, names in sorted(groups.items(), key=lambda item: _rank(item[0])):
        title = _title(defining)
        lines += [title, "-" * len(title), "", ".. autosummary::", ""]
        lines += [f"   {name}" for name in names] + [""]
        for name in names:
            lines += _entry(module, name)
    return lines


class NormcoreAPI(SphinxDirective):
    """Document every name in ``<module>.__all__``, grouped by defining module."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        container = nodes.section()
        container.document = self.state.document
        source = StringList(api_lines(self.arguments[0]), source=self.get_source_info()[0])
        nested_parse_with_titles(self.state, source, container)
        return container.children


def setup(app):
    app.add_directive("normcore-api", NormcoreAPI)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
