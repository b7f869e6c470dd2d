"""torch's names in the drop-ins' messages: ``input``, ``weight``, ``bias``, not ``x``, ``gain``.

The drop-ins call normcore's functions, whose messages name the functions'
arguments (``x``, ``gain``, ``mean``). When such a call fails, the input is
checked again against the module's tensors under torch's names, by the same
rules (:func:`~normcore._plumbing.validation.check_arrays`), so the message a
user sees names what they passed and what the module holds. Only a failing
call pays for the second check.
"""

from __future__ import annotations

from typing import Any

import torch

from normcore._plumbing.compat import library_label
from normcore._plumbing.validation import check_arrays

__all__ = ["check_tensor", "renamed"]


def check_tensor(input: Any) -> None:
    """Refuse an ``input`` that is not a tensor, as ``torch.nn`` does (a TypeError naming it).

    Checked first: the drop-ins read its shape before normcore's checks run.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {library_label(input)}")


def renamed(error: Exception, input: Any, **tensors: Any) -> Exception:
    """The exception to raise for ``error``: the same check's under torch's names, or ``error``.

    ``tensors`` are the module's tensors by their ``state_dict`` names
    (``weight=module.weight``); None entries are skipped.
    """
    try:
        check_arrays(input, x_name="input", **tensors)
    except (TypeError, ValueError) as found:
        return found
    return error
