"""RMS normalization over the last axis of ``N x D`` data: layer norm without centering."""

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
from .layer_norm import SHAPES


class RMSNorm(NormBenchmark):
    params = [BACKENDS, IMPLS, list(SHAPES), DTYPES]
    has_bias = False

    def shapes(self, label):
        x_shape = SHAPES[label]
        return x_shape, x_shape[-1:]

    def forward(self, x, gain, bias):
        return normcore.rms_norm(x, gain, eps=EPS)

    def backward(self, dy, x, gain, bias):
        return normcore.rms_norm_backward(dy, x, gain, eps=EPS).dx

    def native(self, functional, x, gain, bias):
        return functional.rms_norm(x, x.shape[-1:], gain, EPS)

    def expected(self, x, gain, bias, dy):
        return (
            reference_forward(x, gain, None, -1, center=False),
            reference_dx(dy, x, gain, -1, center=False),
        )
