"""Plain LSTM vs LN-LSTM on scikit-learn's 8x8 digits read row by row.

Each image is a sequence of 8 steps of 8 pixel intensities (scaled to
[0, 1]); the final hidden state goes through a linear softmax readout. Training
uses only normcore: :func:`normcore.rnn` / :func:`normcore.rnn_backward` for
the recurrent part, a hand-written softmax cross-entropy readout and
:class:`normcore.optim.Adam`, in any library normcore runs on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

import normcore
from normcore._plumbing.compat import device_of, resolve_creation, to_numpy
from normcore.optim import Adam

from ._common import pyplot, softmax_cross_entropy

__all__ = ["compare", "load_digit_sequences", "plot_curves", "train"]


def load_digit_sequences(seed: int = 0, test_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Return ``{"x_train", "y_train", "x_test", "y_test"}``; x is (N, 8 steps, 8 features)."""
    from sklearn.datasets import load_digits  # the data ships with scikit-learn

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float64)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(test_fraction * len(x))
    test, train_ = order[:n_test], order[n_test:]
    return {"x_train": x[train_], "y_train": y[train_], "x_test": x[test], "y_test": y[test]}


class _Classifier:
    """LSTM (plain or LN) + linear readout, trained with normcore's own gradients."""

    def __init__(self, xp, device, dtype, *, layer_norm, hidden, classes, seed, like):
        self.xp, self.layer_norm = xp, layer_norm
        self.rnn = normcore.rnn_params(
            "lstm", 8, hidden, layer_norm=layer_norm, like=like, device=device, dtype=dtype,
            seed=seed,
        )  # fmt: skip
        limit = np.sqrt(6.0 / (hidden + classes))
        w = np.random.default_rng(seed + 1).uniform(-limit, limit, (hidden, classes))
        self.readout = {
            "W": xp.asarray(w, dtype=dtype, device=device),
            "b": xp.zeros((classes,), dtype=dtype, device=device),
        }

    def _kwargs(self):
        return {"cell": "lstm", "layer_norm": self.layer_norm, "batch_first": True}

    def logits(self, xs):
        _, (h, _) = normcore.rnn(xs, None, self.rnn, **self._kwargs())
        return h, self.xp.matmul(h, self.readout["W"]) + self.readout["b"]

    def loss_and_grads(self, xs, onehot):
        xp = self.xp
        h, logits = self.logits(xs)
        loss, dlogits = softmax_cross_entropy(xp, logits, onehot)
        dreadout = {
            "W": xp.matmul(xp.permute_dims(h, (1, 0)), dlogits),
            "b": xp.sum(dlogits, axis=0),
        }
        dh = xp.matmul(dlogits, xp.permute_dims(self.readout["W"], (1, 0)))
        # only the final state feeds the loss: the per-step outputs get no gradient
        dhs = xp.zeros((xs.shape[0], xs.shape[1], dh.shape[1]), dtype=dh.dtype, device=device_of(h))
        grads = normcore.rnn_backward(
            dhs, xs, None, self.rnn,
            dfinal_state=(dh, xp.zeros_like(dh)), **self._kwargs(),
        )  # fmt: skip
        return loss, grads.dparams, dreadout


def train(
    *,
    layer_norm: bool,
    backend: str = "numpy",
    hidden: int = 32,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 5e-3,
    seed: int = 0,
    dtype: str = "float32",
    data: dict | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> dict[str, Any]:
    """Train one LSTM classifier on the digit sequences; return its curves.

    Parameters
    ----------
    layer_norm : bool
        LN-LSTM (eqs. 20-22) or the plain LSTM.
    backend : {"numpy", "torch"} or module
        Library the arrays live in (``like`` of :func:`normcore.rnn_params`).
    hidden, epochs, batch_size, lr, seed, dtype
        Model size and training settings (Adam with PyTorch's defaults but ``lr``).
    data : dict, optional
        The output of :func:`load_digit_sequences` (loaded when None).
    progress : callable, optional
        Called as ``progress(epoch, train_loss, test_accuracy)`` after each epoch.

    Returns
    -------
    dict
        ``train_loss`` (mean cross-entropy per epoch), ``test_accuracy`` (per
        epoch) and ``seconds`` (wall-clock time of the training loop).
    """
    like = __import__(backend) if isinstance(backend, str) else backend
    xp, device, dtype = resolve_creation(like, None, dtype)
    data = load_digit_sequences(seed) if data is None else data
    model = _Classifier(
        xp, device, dtype, layer_norm=layer_norm, hidden=hidden, classes=10, seed=seed, like=like
    )
    opt_rnn, opt_readout = Adam(model.rnn, lr=lr), Adam(model.readout, lr=lr)
    eye = np.eye(10)
    convert = lambda a: xp.asarray(a, dtype=dtype, device=device)  # noqa: E731
    x_test = convert(data["x_test"])
    rng = np.random.default_rng(seed)
    curves: dict[str, Any] = {"train_loss": [], "test_accuracy": []}
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(data["x_train"]))
        total, count = 0.0, 0
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            xs, onehot = convert(data["x_train"][batch]), convert(eye[data["y_train"][batch]])
            loss, drnn, dreadout = model.loss_and_grads(xs, onehot)
            opt_rnn.step(drnn)
            opt_readout.step(dreadout)
            total += float(loss) * len(batch)
            count += len(batch)
        _, logits = model.logits(x_test)
        predicted = to_numpy(xp.argmax(logits, axis=1))
        accuracy = float(np.mean(predicted == data["y_test"]))
        curves["train_loss"].append(total / count)
        curves["test_accuracy"].append(accuracy)
        if progress is not None:
            progress(epoch, total / count, accuracy)
    curves["seconds"] = time.perf_counter() - start
    return curves


def compare(**settings: Any) -> dict[str, dict[str, Any]]:
    """Train the plain LSTM and the LN-LSTM with the same settings (see :func:`train`)."""
    data = settings.pop("data", None) or load_digit_sequences(settings.get("seed", 0))
    return {
        "LSTM": train(layer_norm=False, data=data, **settings),
        "LN-LSTM": train(layer_norm=True, data=data, **settings),
    }


def plot_curves(results: dict[str, dict[str, Any]], path: str, title: str = "") -> None:
    """Write a PNG of training loss and test accuracy per epoch for each run."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, curves in results.items():
        epochs = range(1, len(curves["train_loss"]) + 1)
        ax_loss.plot(epochs, curves["train_loss"], marker="o", label=name)
        ax_acc.plot(epochs, curves["test_accuracy"], marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training cross-entropy", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
