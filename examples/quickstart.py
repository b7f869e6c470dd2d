"""normcore in one minute: the same calls, forward and backward, on NumPy and PyTorch arrays.

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

# Gradients of the loss L = sum(y * weights). The weights differ along the row on
# purpose: layer norm's outputs sum to the same value for every input row, so
# the gradient of plain sum(y) with respect to x is zero, which shows nothing.
weights = np.linspace(-1.0, 1.0, 5, dtype=np.float32)
dy = np.broadcast_to(weights, x.shape).copy()  # dL/dy
grads = normcore.layer_norm_backward(dy, x, gain, bias)
print("\nlayer_norm_backward of L = sum(y * weights), weights =", weights)
print("dL/dx    :\n", grads.dx.round(3))
print("dL/dgain :", grads.dgain.round(3))
print("dL/dbias :", grads.dbias.round(3), "(the column sums of dy)")

try:
    import torch
except ImportError:
    print("\ntorch is not installed: pip install torch==2.13.0 to see the PyTorch half")
else:
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gain, requires_grad=True)
    yt = normcore.layer_norm(xt, gt, torch.tensor(bias))
    print("\ntorch input :", type(xt).__name__, xt.dtype, "->", type(yt).__name__, yt.dtype)
    print("same numbers as NumPy:", np.allclose(yt.detach().numpy(), y, atol=1e-6))
    (yt * torch.tensor(weights)).sum().backward()
    print("autograd's dL/dx equals layer_norm_backward's:",
          np.allclose(xt.grad.numpy(), grads.dx, atol=1e-5))  # fmt: skip
    print("autograd's dL/dgain:", gt.grad.numpy().round(3))
    rms = normcore.rms_norm(xt.detach().to(torch.bfloat16))
    print("rms_norm on bfloat16 returns", rms.dtype)
