"""Layer-normalized recurrent networks (LN-LSTM, LN-GRU; Ba, Kiros & Hinton, eq. 4)."""

import normcore

from .common import BACKENDS, Benchmark, random, reference_path_if

T, B, D, HIDDEN = 16, 32, 256, 256
CELLS = ["lstm", "gru"]


class LayerNormRNN(Benchmark):
    param_names = ["backend", "impl", "cell", "dtype"]
    params = [BACKENDS, ["normcore", "reference"], CELLS, ["float32"]]

    def calls(self, be, impl, cell, dtype):
        rnn, rnn_backward = normcore.rnn, normcore.rnn_backward
        xs = be.asarray(random((T, B, D), dtype, seed=0), dtype)
        dhs = be.asarray(random((T, B, HIDDEN), dtype, seed=1), dtype)
        h0 = be.asarray(random((B, HIDDEN), dtype, seed=2), dtype)
        state0 = h0
        if cell == "lstm":
            state0 = (h0, be.asarray(random((B, HIDDEN), dtype, seed=3), dtype))
        params = normcore.rnn_params(cell, D, HIDDEN, layer_norm=True, like=xs, seed=0)
        reference = impl == "reference"

        def forward():
            with reference_path_if(reference):
                return rnn(xs, state0, params, cell=cell, layer_norm=True)

        def backward():
            with reference_path_if(reference):
                return rnn_backward(dhs, xs, state0, params, cell=cell, layer_norm=True)

        return forward, backward
