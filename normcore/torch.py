"""``torch.nn.Module`` drop-ins computed by normcore; importing this module imports torch.

``from normcore.torch import LayerNorm, LSTM`` and ``normcore.torch.LayerNorm``
give the same classes. They live in :mod:`normcore.backends.torch_nn` (with
the other torch-specific code); this module only makes them importable under
their public name.
"""

from normcore.backends.torch_nn import *  # noqa: F403 (the public names, by __all__)
from normcore.backends.torch_nn import __all__  # noqa: F401
