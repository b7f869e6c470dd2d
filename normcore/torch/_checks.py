"""The drop-ins' own checks: torch's names in messages, and the eps rule at construction.

*Names.* Messages say ``input``, ``weight``, ``bias``, not ``x``, ``gain``.
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
from normcore._plumbing.validation import check_arrays, check_eps, check_eps_in

__all__ = ["check_eps_for", "check_tensor", "renamed"]


def check_eps_for(eps: Any, dtype: Any) -> float:
    """``eps`` after normcore's checks, for parameters of ``dtype`` (None: torch's default).

    The eps rule of :func:`~normcore._plumbing.validation.check_eps_in`, as
    normcore's own modules apply it at construction: ``eps`` must be a normal
    number of the dtype the statistics are computed in (float32 for
    float16/bfloat16). A later ``.to(dtype)`` is checked by the forward.
    """
    eps = check_eps(eps)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and not dtype.is_complex:
        check_eps_in(eps, torch, torch.float32 if torch.finfo(dtype).bits < 32 else dtype)
    return eps  # another dtype: torch.nn's own error follows


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
