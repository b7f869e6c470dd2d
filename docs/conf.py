"""Sphinx configuration of the normcore documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(after ``pip install -e ".[docs]"``; the PyTorch section of the API reference
needs torch installed).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent / "_ext"))

import normcore

project = "normcore"
author = "The normcore developers"
copyright = "The normcore developers"
release = normcore.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "normcore_api",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Methods are documented in place by ``autoclass :members:``; numpydoc's own
# method tables would point to pages that are not generated.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autosummary_generate = False

html_theme = "alabaster"
html_title = f"normcore {release}"
