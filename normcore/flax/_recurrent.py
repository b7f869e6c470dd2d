"""A layer-normalized LSTM cell for ``flax.nnx``, computed by :func:`normcore.rnn`.

Flax has no layer-normalized recurrent cell; this one follows Flax's cell
conventions (those of ``flax.nnx.OptimizedLSTMCell``: constructor, the
``dense_i``/``dense_h`` kernels and their initializers, the ``(c, h)`` carry,
``initialize_carry``, use with ``flax.nnx.RNN``) and computes eqs. 20-22 of
Ba, Kiros & Hinton (2016) with normcore's one recurrent loop.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import initializers

from normcore._functional.rnn import rnn

__all__ = ["LayerNormLSTMCell"]

# Flax's LSTMCell defaults
_KERNEL_INIT = initializers.lecun_normal()
_RECURRENT_KERNEL_INIT = initializers.orthogonal()
_BIAS_INIT = initializers.zeros_init()


class LayerNormLSTMCell(nnx.RNNCellBase):
    """Layer-normalized LSTM cell (Ba et al., 2016, eqs. 20-22) for ``flax.nnx``.

    ::

        z = LN(W_i x; ln_i) + LN(W_h h; ln_h) + b       gates i, f, g, o (Flax's order)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(LN(c'; ln_c))             the carried cell state is c', not LN(c')

    Parameters
    ----------
    in_features, hidden_features : int
        Sizes of the input and of the hidden state.
    epsilon : float, default 1e-5
        Added to the variance in each layer norm (:func:`normcore.rnn`'s default).
    kernel_init, recurrent_kernel_init, bias_init
        Initializers of ``dense_i.kernel``, ``dense_h.kernel`` and
        ``dense_h.bias`` (the bias ``b``), Flax's ``LSTMCell`` defaults.
    dtype, param_dtype
        The computation dtype (None: promoted from the inputs and parameters,
        as in Flax) and the parameters' dtype.
    rngs : flax.nnx.Rngs
        For the kernels' initializers.

    Attributes
    ----------
    dense_i, dense_h : flax.nnx.Linear
        ``W_i`` (``in_features x 4 * hidden_features``, no bias) and ``W_h``
        with the bias ``b``, exactly as in ``flax.nnx.OptimizedLSTMCell``.
    ln_i, ln_h, ln_c : flax.nnx.LayerNorm
        The gains (``scale``, ones) and biases (``bias``, zeros) of the three
        layer norms, over ``4 * hidden_features``, ``4 * hidden_features``
        and ``hidden_features`` units.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import normcore.flax
    >>> cell = normcore.flax.LayerNormLSTMCell(3, 5, rngs=nnx.Rngs(0))
    >>> layer = nnx.RNN(cell)  # batch-major (batch, time, features)
    >>> layer(jnp.ones((2, 7, 3))).shape
    (2, 7, 5)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        epsilon: float = 1e-5,
        kernel_init: Any = _KERNEL_INIT,
        recurrent_kernel_init: Any = _RECURRENT_KERNEL_INIT,
        bias_init: Any = _BIAS_INIT,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        gates = 4 * hidden_features
        linear = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense_i = nnx.Linear(
            in_features, gates, use_bias=False, kernel_init=kernel_init, **linear
        )
        self.dense_h = nnx.Linear(
            hidden_features, gates, kernel_init=recurrent_kernel_init, bias_init=bias_init,
            **linear,
        )  # fmt: skip
        self.ln_i, self.ln_h = (nnx.LayerNorm(gates, epsilon=epsilon, **linear) for _ in range(2))
        self.ln_c = nnx.LayerNorm(hidden_features, epsilon=epsilon, **linear)

    def _params(self) -> dict[str, Any]:
        """The parameters under :func:`normcore.rnn_params`' names (gate order i, f, g, o)."""
        return {
            "W_x": self.dense_i.kernel[...],
            "W_h": self.dense_h.kernel[...],
            "b": self.dense_h.bias[...],
            **{
                f"{kind}_{part}": getattr(norm, attr)[...]
                for part, norm in (("x", self.ln_i), ("h", self.ln_h), ("c", self.ln_c))
                for kind, attr in (("gain", "scale"), ("bias", "bias"))
            },
        }

    def __call__(self, carry: tuple[Any, Any], inputs: Any) -> tuple[tuple[Any, Any], Any]:
        """One step: ``((c', h'), h')`` from the carry ``(c, h)`` and ``inputs`` ``(..., in)``."""
        c, h = carry
        names = list(self._params())
        inputs, c, h, *values = nnx.nn.dtypes.promote_dtype(
            (inputs, c, h, *self._params().values()), dtype=self.dtype
        )
        params = dict(zip(names, values, strict=True))
        batch = inputs.shape[:-1]
        flat = (-1, inputs.shape[-1])  # normcore.rnn takes one batch axis
        _, (h, c) = rnn(
            inputs.reshape(flat)[None],
            (h.reshape(-1, self.hidden_features), c.reshape(-1, self.hidden_features)),
            params,
            cell="lstm",
            eps=self.epsilon,
        )
        shape = (*batch, self.hidden_features)
        h, c = h.reshape(shape), c.reshape(shape)
        return (c, h), h

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
    ) -> tuple[Any, Any]:
        """Zeros (or ``carry_init``'s values) ``(c, h)`` for inputs of ``input_shape``."""
        shape = (*input_shape[:-1], self.hidden_features)
        if carry_init is None:
            zeros = jnp.zeros(shape, self.param_dtype)
            return zeros, zeros
        if isinstance(rngs, nnx.Rngs):
            rngs = rngs.carry
        if rngs is None:
            raise ValueError("carry_init needs rngs: pass rngs=nnx.Rngs(...) to initialize_carry")
        return carry_init(rngs(), shape, self.param_dtype), carry_init(
            rngs(), shape, self.param_dtype
        )

    @property
    def num_feature_axes(self) -> int:
        return 1
