"""Group normalization of NCHW data (statistics per example over each group of channels)."""

import normcore

from .common import (
    BACKENDS,
    DTYPES,
    EPS,
    IMPLS,
    NORMCORE_IMPLS,
    NormBenchmark,
    reference_dx,
    reference_forward,
)

SHAPES = {"16x128x16x32": (16, 128, 16, 32)}  # 2**20 elements
GROUPS = 32


class GroupNorm(NormBenchmark):
    params = [BACKENDS, IMPLS, list(SHAPES), DTYPES]

    def setup(self, backend, impl, shape, dtype):
        if impl in NORMCORE_IMPLS:
            self.group_norm = normcore.group_norm
        super().setup(backend, impl, shape, dtype)

    def shapes(self, label):
        x_shape = SHAPES[label]
        return x_shape, x_shape[1:2]

    def forward(self, x, gain, bias):
        return self.group_norm(x, GROUPS, gain, bias, axis=1, eps=EPS)

    def backward(self, dy, x, gain, bias):
        group_norm_backward = normcore.group_norm_backward
        return group_norm_backward(dy, x, GROUPS, gain, bias, axis=1, eps=EPS)[0]

    def native(self, functional, x, gain, bias):
        return functional.group_norm(x, GROUPS, gain, bias, EPS)

    def expected(self, x, gain, bias, dy):
        n, c, h, w = x.shape
        grouped = (n, GROUPS, c // GROUPS, h, w)
        g = gain.reshape(1, GROUPS, c // GROUPS, 1, 1)
        b = bias.reshape(1, GROUPS, c // GROUPS, 1, 1)
        axes = (2, 3, 4)
        y = reference_forward(x.reshape(grouped), g, b, axes)
        dx = reference_dx(dy.reshape(grouped), x.reshape(grouped), g, axes)
        return y.reshape(x.shape), dx.reshape(x.shape)
