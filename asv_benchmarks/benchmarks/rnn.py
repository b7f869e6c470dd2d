"""Layer-normalized recurrent networks (LN-LSTM, LN-GRU; Ba, Kiros & Hinton, eq. 4)."""

import normcore

from .common import BACKENDS, Backend, SkipNotImplemented, random, reference_path_if

T, B, D, HIDDEN = 16, 32, 256, 256
CELLS = ["lstm", "gru"]


class LayerNormRNN:
    param_names = ["backend", "impl", "cell", "dtype"]
    params = [BACKENDS, ["normcore", "reference"], CELLS, ["float32"]]
    timeout = 300

    def setup(self, backend, impl, cell, dtype):
        rnn, rnn_params = normcore.rnn, normcore.rnn_params
        self.backend = be = Backend(backend)
        xs = be.asarray(random((T, B, D), dtype, seed=0))
        dhs = be.asarray(random((T, B, HIDDEN), dtype, seed=1))
        h0 = be.asarray(random((B, HIDDEN), dtype, seed=2))
        state0 = (h0, be.asarray(random((B, HIDDEN), dtype, seed=3))) if cell == "lstm" else h0
        params = rnn_params(cell, D, HIDDEN, layer_norm=True, like=xs, seed=0)
        reference = impl == "reference"

        def forward():
            with reference_path_if(reference):
                return rnn(xs, state0, params, cell=cell, layer_norm=True)

        def backward():
            rnn_backward = normcore.rnn_backward
            with reference_path_if(reference):
                return rnn_backward(dhs, xs, state0, params, cell=cell, layer_norm=True)

        self.forward_call, self.backward_call = forward, backward

    def time_forward(self, *params):
        self.forward_call()
        self.backend.sync()

    def time_backward(self, *params):
        self.backward_call()
        self.backend.sync()

    def peakmem_forward(self, *params):
        if self.backend.on_gpu:
            raise SkipNotImplemented("peakmem_ sees host memory only, not the GPU's")
        self.forward_call()
