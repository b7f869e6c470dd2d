"""Layer-normalized recurrent networks (LN-LSTM, LN-GRU; Ba, Kiros & Hinton, eq. 4).

Written against the contract ``rnn_params(cell, input_size, hidden_size, *, layer_norm,
like, seed)``, ``rnn(xs, state0, params, *, cell, layer_norm=True)`` and
``rnn_backward(dhs, xs, state0, params, *, cell, layer_norm)``. Until the RNN branch is
merged they do not exist here and every benchmark of this file skips (``require``).
Assumptions the lead must check after the merge: ``xs`` is time-major ``T x B x D``,
``state0`` is ``h0`` (``(h0, c0)`` for an LSTM), the output is the sequence of hidden
states (or starts with it), and ``rnn_backward`` takes the gradient of that sequence.
"""

from .common import BACKENDS, Backend, SkipNotImplemented, random, reference_path_if, require

T, B, D, HIDDEN = 16, 32, 256, 256
CELLS = ["lstm", "gru"]


class LayerNormRNN:
    param_names = ["backend", "impl", "cell", "dtype"]
    params = [BACKENDS, ["normcore", "reference"], CELLS, ["float32"]]
    timeout = 300

    def setup(self, backend, impl, cell, dtype):
        rnn, rnn_params = require("rnn"), require("rnn_params")
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
            rnn_backward = require("rnn_backward")
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
