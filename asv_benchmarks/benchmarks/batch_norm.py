"""Batch normalization in training mode (batch statistics), NCHW and NHWC."""

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

N, C, H, W = 16, 64, 32, 32  # 2**20 elements
LAYOUTS = {"NCHW": ((N, C, H, W), 1), "NHWC": ((N, H, W, C), 3)}


class BatchNorm(NormBenchmark):
    params = [BACKENDS, IMPLS, list(LAYOUTS), DTYPES]

    def setup(self, backend, impl, shape, dtype):
        if impl in NORMCORE_IMPLS:
            self.batch_norm = normcore.batch_norm
            self.batch_norm_backward = normcore.batch_norm_backward
        self.axis = LAYOUTS[shape][1]
        super().setup(backend, impl, shape, dtype)

    def shapes(self, label):
        return LAYOUTS[label][0], (C,)

    def _reduce_axes(self):
        return tuple(a for a in range(4) if a != self.axis)

    def _broadcast(self, param):
        return param.reshape([C if a == self.axis else 1 for a in range(4)])

    def forward(self, x, gain, bias):
        return self.batch_norm(x, gain, bias, axis=self.axis, eps=EPS)

    def backward(self, dy, x, gain, bias):
        return self.batch_norm_backward(dy, x, gain, bias, axis=self.axis, eps=EPS)[0]

    def native(self, functional, x, gain, bias):
        if self.axis == 1:
            return functional.batch_norm(x, None, None, gain, bias, True, 0.1, EPS)
        # NHWC: a channels-last view of the same memory, which torch's kernel handles natively
        y = functional.batch_norm(x.permute(0, 3, 1, 2), None, None, gain, bias, True, 0.1, EPS)
        return y.permute(0, 2, 3, 1)

    def expected(self, x, gain, bias, dy):
        axes, g = self._reduce_axes(), self._broadcast(gain)
        return reference_forward(x, g, self._broadcast(bias), axes), reference_dx(dy, x, g, axes)
