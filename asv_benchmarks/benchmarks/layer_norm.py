"""Layer normalization over the last axis of ``N x D`` data (Ba, Kiros & Hinton, eq. 3)."""

import normcore

from .common import (
    BACKENDS,
    DTYPES,
    EPS,
    IMPLS,
    NormBenchmark,
    reference_dx,
    reference_forward,
)

# 64x64: per-call overhead; 2**20 elements (4 MiB in float32) with short and long rows: bandwidth.
SHAPES = {"64x64": (64, 64), "4096x256": (4096, 256), "256x4096": (256, 4096)}


class LayerNorm(NormBenchmark):
    params = [BACKENDS, IMPLS, list(SHAPES), DTYPES]

    def shapes(self, label):
        x_shape = SHAPES[label]
        return x_shape, x_shape[-1:]

    def forward(self, x, gain, bias):
        return normcore.layer_norm(x, gain, bias, eps=EPS)

    def backward(self, dy, x, gain, bias):
        return normcore.layer_norm_backward(dy, x, gain, bias, eps=EPS).dx

    def native(self, functional, x, gain, bias):
        return functional.layer_norm(x, x.shape[-1:], gain, bias, EPS)

    def expected(self, x, gain, bias, dy):
        return reference_forward(x, gain, bias, -1), reference_dx(dy, x, gain, -1)
