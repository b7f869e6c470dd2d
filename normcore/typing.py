"""Type aliases used in normcore's signatures.

normcore takes arrays of any library that implements the Python Array API
standard (NumPy, CuPy, PyTorch, JAX, dask, ...), so these aliases name roles,
not classes: the library of an argument is only known at run time. They are
``typing.Any`` to a type checker and documentation to a reader.

Examples
--------
>>> from normcore.typing import Array
>>> def double(x: Array) -> Array:
...     return x * 2
"""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["Array", "DType", "Device", "Namespace"]

#: An array of a supported library (``numpy.ndarray``, ``torch.Tensor``, ...).
Array: TypeAlias = Any
#: An Array API namespace, as ``array_api_compat.array_namespace`` returns it.
Namespace: TypeAlias = Any
#: A device as its library names it (``"cpu"``, ``torch.device("cuda:0")``, ...).
Device: TypeAlias = Any
#: A dtype of an array library (``numpy.float32``, ``torch.bfloat16``, ...).
DType: TypeAlias = Any
