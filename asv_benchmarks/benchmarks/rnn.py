"""Layer-normalized recurrent networks (LN-LSTM, LN-GRU; Ba, Kiros & Hinton, eq. 4)."""

import normcore

from .common import BACKENDS, Benchmark, SkipNotImplemented, random, reference_path_if

T, B, D, HIDDEN = 16, 32, 256, 256
CELLS = ["lstm", "gru"]


class LayerNormRNN(Benchmark):
    param_names = ["backend", "impl", "cell", "dtype"]
    params = [BACKENDS, ["normcore", "reference"], CELLS, ["float32"]]

    def calls(self, be, impl, cell, dtype):
        path = "reference" if impl == "reference" else "fast"
        if path not in be.recurrent:  # dask: the loop as a graph of every step (Backend.recurrent)
            raise SkipNotImplemented(f"the recurrent {path} path is not measured on {be.name}")
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


class TorchRecurrentTraining(Benchmark):
    """Forward + backward by autograd of ``normcore.torch.LSTM/GRU`` vs ``torch.nn``'s.

    ``impl``: ``torch.nn`` (the native module), ``plain`` (``normcore.torch``'s
    plain module, which runs torch's own recurrent kernel through
    ``Adapter.recurrent``) or ``layer_norm`` (the LN cell, normcore's loop).
    Over ``T`` the LN cell's ratio to ``torch.nn`` must stay flat: the cost per
    step does not grow with the sequence (the steps are taken once, by
    ``unstack``). ``forward`` times the
    forward alone, ``backward`` forward + backward.
    """

    param_names = ["backend", "impl", "cell", "steps"]
    params = [["torch-cpu"], ["torch.nn", "plain", "layer_norm"], CELLS, [50, 400]]
    timeout = 600

    def calls(self, be, impl, cell, steps):
        import torch

        import normcore.torch  # the drop-ins are not imported by `import normcore`

        name = {"lstm": "LSTM", "gru": "GRU"}[cell]
        if impl == "torch.nn":
            module = getattr(torch.nn, name)(D, HIDDEN)
        else:
            module = getattr(normcore.torch, name)(D, HIDDEN, layer_norm=impl == "layer_norm")
        x = torch.as_tensor(random((steps, B, D), "float32", seed=0)).requires_grad_()

        def forward():
            with torch.no_grad():
                return module(x)

        def backward():
            output, _ = module(x)
            output.sum().backward()

        return forward, backward


class NumPyLSTMTraining(Benchmark):
    """``normcore.LSTM`` on NumPy arrays vs ``torch.nn.LSTM``: issue #16's comparison.

    ``impl``: ``torch.nn`` (the plain native module, on tensors sharing the
    NumPy data), ``plain`` or ``layer_norm`` (normcore's module, on NumPy
    arrays). ``forward``: the module in ``eval()`` (torch under ``no_grad``);
    ``backward``: a training step, forward + backward (normcore's module in
    training mode keeps its tape). ``normcore bench`` prints the same ratios,
    each call timed after a pause (the BLAS threads' spinning stays out).
    """

    param_names = ["backend", "impl"]
    params = [["numpy"], ["torch.nn", "plain", "layer_norm"]]
    steps, batch, size = 50, 64, 256

    def calls(self, be, impl):
        xs = random((self.steps, self.batch, self.size), "float32", seed=0)
        dhs = random((self.steps, self.batch, self.size), "float32", seed=1)
        if impl == "torch.nn":
            try:
                import torch
            except ImportError as error:
                raise SkipNotImplemented("torch is not installed") from error
            module = torch.nn.LSTM(self.size, self.size)
            x, dy = torch.from_numpy(xs).requires_grad_(), torch.from_numpy(dhs)

            def forward():
                with torch.no_grad():
                    return module(x)

            def backward():
                output, _ = module(x)
                output.backward(dy)

            return forward, backward
        layer = normcore.LSTM(self.size, self.size, layer_norm=impl == "layer_norm")

        def forward_numpy():
            return layer.eval()(xs)

        def backward_numpy():
            layer.train()(xs)
            return layer.backward(dhs)

        return forward_numpy, backward_numpy
