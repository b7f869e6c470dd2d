"""normcore in one minute: the same call on NumPy and PyTorch arrays.

Run with ``python examples/quickstart.py``.
"""

import numpy as np

import normcore

rng = np.random.default_rng(0)
x = rng.normal(loc=3.0, scale=2.0, size=(2, 5)).astype(np.float32)
gain, bias = np.full(5, 2.0, np.float32), np.full(5, 0.5, np.float32)

y = normcore.layer_norm(x, gain, bias)
print("NumPy input :", type(x).__name__, x.dtype, "\n", x.round(3))
print("layer_norm  :", type(y).__name__, y.dtype, "\n", y.round(3))
mean, var = normcore.moments(y, axis=-1)
print("per-row mean/var after normalizing (gain 2, bias 0.5):", mean.round(3), var.round(3))

try:
    import torch
except ImportError:
    print("\ntorch is not installed: pip install torch==2.13.0 to see the PyTorch half")
else:
    xt = torch.tensor(x, requires_grad=True)
    yt = normcore.layer_norm(xt, torch.tensor(gain), torch.tensor(bias))
    print("\ntorch input :", type(xt).__name__, xt.dtype, "->", type(yt).__name__, yt.dtype)
    print("same numbers as NumPy:", np.allclose(yt.detach().numpy(), y, atol=1e-6))
    yt.sum().backward()
    print("autograd works, |dL/dx| =", float(xt.grad.abs().sum()))
    rms = normcore.rms_norm(xt.detach().to(torch.bfloat16))
    print("rms_norm on bfloat16 returns", rms.dtype)
