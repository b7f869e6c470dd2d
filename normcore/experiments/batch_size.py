"""Batch size: an MLP without normalization, with batch norm and with layer norm, batch 128 and 4.

The permutation-invariant MNIST comparison of Ba, Kiros & Hinton (2016) in
miniature: scikit-learn's 8x8 digits (64 pixels, shipped with scikit-learn)
instead of MNIST, a 64-H-H-10 ReLU network instead of 784-1000-1000-10,
softmax cross-entropy and Adam. Each hidden layer normalizes its summed inputs
``a = h W`` (no bias before the normalization), then applies a gain and bias and
the ReLU. Batch norm at the small batch normalizes with the *unbiased* batch
variance, as in the paper (``correction=1``); at test time it uses its running
statistics (PyTorch's convention, momentum 0.1). Everything runs on normcore's
own forward and backward functions and :class:`normcore.optim.Adam`, in any
library normcore supports; nothing here uses autograd.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import normcore
from normcore._plumbing.compat import resolve_creation, to_numpy
from normcore.optim import Adam

from ._common import Progress, format_table, log_softmax, pyplot, softmax_cross_entropy
from .rnn_digits import load_digit_sequences

__all__ = ["NORMS", "compare", "format_results", "load_digit_vectors", "plot_curves", "train"]

NORMS = {"none": "no norm", "batch": "batch norm", "layer": "layer norm"}
SMALL_BATCH = 4  # the paper's small batch; batch norm normalizes with the unbiased variance there


def load_digit_vectors(seed: int = 0, test_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """The digits as 64-pixel vectors in [0, 1], split into train and test by ``seed``."""
    data = load_digit_sequences(seed, test_fraction)
    return {k: v.reshape(len(v), -1) if k.startswith("x") else v for k, v in data.items()}


class _MLP:
    """64-H-H-10 ReLU network; each hidden layer is ``relu(norm(h W))`` (``+ b`` without norm)."""

    def __init__(self, like, xp, device, dtype, *, norm, hidden, seed, correction):
        self.xp = xp
        rng = np.random.default_rng(seed)
        sizes = (64, hidden, hidden, 10)
        weights = {}
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), 1):
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, fan_out))  # He et al. for ReLU
            weights[f"W{i}"] = xp.asarray(w, dtype=dtype, device=device)
        biased = (3,) if norm != "none" else (1, 2, 3)  # a bias before a norm is cancelled
        for i in biased:
            weights[f"b{i}"] = xp.zeros((sizes[i],), dtype=dtype, device=device)
        self.weights = weights
        create = {"like": like, "device": device, "dtype": dtype}

        def make_norm() -> Any:
            if norm == "batch":
                return normcore.BatchNorm(hidden, correction=correction, **create)
            return normcore.LayerNorm(hidden, **create)

        self.norms = [] if norm == "none" else [make_norm(), make_norm()]  # one per hidden layer

    def _normalize(self, layer: int, a: Any, training: bool) -> Any:
        if not self.norms:
            return a + self.weights[f"b{layer + 1}"]
        norm = self.norms[layer]
        return norm(a, training=training) if isinstance(norm, normcore.BatchNorm) else norm(a)

    def forward(self, x: Any, training: bool) -> tuple[Any, list]:
        xp, saved, h = self.xp, [], x
        for layer in range(2):
            z = self._normalize(layer, xp.matmul(h, self.weights[f"W{layer + 1}"]), training)
            active = xp.astype(z > 0, z.dtype)
            saved.append((h, active))
            h = z * active
        saved.append((h, None))
        return xp.matmul(h, self.weights["W3"]) + self.weights["b3"], saved

    def backward(self, saved: list, dlogits: Any) -> dict[str, Any]:
        """Weight gradients; the norm objects keep their own (``grads()``)."""
        xp, w = self.xp, self.weights
        h, _ = saved[2]
        grads = {
            "W3": xp.matmul(xp.permute_dims(h, (1, 0)), dlogits),
            "b3": xp.sum(dlogits, axis=0),
        }
        dh = xp.matmul(dlogits, xp.permute_dims(w["W3"], (1, 0)))
        for layer in (1, 0):
            h, active = saved[layer]
            da = dh * active
            if self.norms:
                da = self.norms[layer].backward(da)
            else:
                grads[f"b{layer + 1}"] = xp.sum(da, axis=0)
            grads[f"W{layer + 1}"] = xp.matmul(xp.permute_dims(h, (1, 0)), da)
            if layer:
                dh = xp.matmul(da, xp.permute_dims(w[f"W{layer + 1}"], (1, 0)))
        return grads


def _evaluate(model: _MLP, x: Any, labels: np.ndarray) -> tuple[float, float]:
    """(mean NLL, error rate) in inference mode (batch norm: running statistics)."""
    xp = model.xp
    logits, _ = model.forward(x, training=False)
    log_p = to_numpy(log_softmax(xp, logits)).astype(np.float64)
    nll = -float(np.mean(log_p[np.arange(len(labels)), labels]))
    error = float(np.mean(np.argmax(log_p, axis=1) != labels))
    return nll, error


def train(
    *,
    norm: str,
    batch_size: int,
    backend: Any = np,
    hidden: int = 256,
    epochs: int = 20,
    lr: float = 1e-3,
    seed: int = 0,
    dtype: str = "float32",
    data: dict | None = None,
    step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train one MLP on the digit vectors; return its curves.

    Parameters
    ----------
    norm : {"none", "batch", "layer"}
        Normalization of the two hidden layers.
    batch_size : int
        Mini-batch size; the last incomplete batch of each epoch is dropped (a
        batch of one example would leave batch norm without a variance). Batch
        norm uses the unbiased batch variance when ``batch_size`` is
        :data:`SMALL_BATCH` (4) or less, the biased one otherwise.
    backend : module
        Array library (``numpy``, ``torch``, ``cupy``) the model lives in.
    hidden, epochs, lr, seed, dtype
        Width of the hidden layers, passes over the training set, Adam's
        learning rate (PyTorch's other defaults), seed of the initialization
        and of the batch order, and the dtype of every array.
    data : dict, optional
        The output of :func:`load_digit_vectors` (loaded with ``seed`` when None).
    step : callable, optional
        Called after every optimizer step (a progress bar).

    Returns
    -------
    dict
        ``train_nll`` and ``test_error`` after each epoch (inference mode, on
        the whole training and test sets) and ``seconds`` of the training loop.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    xp, device, dtype = resolve_creation(backend, None, dtype)
    data = load_digit_vectors(seed) if data is None else data
    correction = 1 if batch_size <= SMALL_BATCH else 0
    model = _MLP(
        backend, xp, device, dtype, norm=norm, hidden=hidden, seed=seed, correction=correction
    )
    optimizers = [Adam(model.weights, lr=lr)] + [Adam(n, lr=lr) for n in model.norms]
    x_train = xp.asarray(data["x_train"], dtype=dtype, device=device)
    x_test = xp.asarray(data["x_test"], dtype=dtype, device=device)
    onehot = xp.asarray(np.eye(10)[data["y_train"]], dtype=dtype, device=device)
    rng = np.random.default_rng(seed + 1)
    curves: dict[str, Any] = {"train_nll": [], "test_error": []}
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(data["x_train"]))
        for first in range(0, len(order) - batch_size + 1, batch_size):
            index = xp.asarray(order[first : first + batch_size], device=device)
            x = xp.take(x_train, index, axis=0)
            logits, saved = model.forward(x, training=True)
            _, dlogits = softmax_cross_entropy(xp, logits, xp.take(onehot, index, axis=0))
            grads = model.backward(saved, dlogits)
            optimizers[0].step(grads)
            for opt in optimizers[1:]:
                opt.step()
            if step is not None:
                step()
        curves["train_nll"].append(_evaluate(model, x_train, data["y_train"])[0])
        curves["test_error"].append(_evaluate(model, x_test, data["y_test"])[1])
    curves["seconds"] = time.perf_counter() - start
    return curves


def compare(
    *,
    batch_sizes: tuple[int, ...] = (128, SMALL_BATCH),
    norms: tuple[str, ...] = tuple(NORMS),
    epochs: int = 20,
    seed: int = 0,
    data: dict | None = None,
    show_progress: bool = False,
    **settings: Any,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Train every ``(norm, batch size)`` arm with the same data, seed and settings.

    ``settings`` go to :func:`train`. Returns ``{(norm, batch_size): curves}``.
    """
    data = load_digit_vectors(seed) if data is None else data
    n = len(data["x_train"])
    total = epochs * len(norms) * sum(n // b for b in batch_sizes)
    results = {}
    with Progress(total, "batch-size", disable=not show_progress) as bar:
        for batch_size in batch_sizes:
            for norm in norms:
                results[norm, batch_size] = train(
                    norm=norm, batch_size=batch_size, epochs=epochs, seed=seed, data=data,
                    step=bar.update, **settings,
                )  # fmt: skip
    return results


def format_results(results: dict[tuple[str, int], dict[str, Any]]) -> str:
    """The table: final training NLL and test error of each arm."""
    rows = [
        (NORMS[norm], batch, f"{c['train_nll'][-1]:.4f}", f"{100 * c['test_error'][-1]:.2f} %")
        for (norm, batch), c in results.items()
    ]
    return format_table(("model", "batch size", "train NLL", "test error"), rows)


def plot_curves(results: dict[tuple[str, int], dict[str, Any]], path: str, title: str = "") -> None:
    """Write a PNG: training NLL (top) and test error (bottom) per epoch, one column per batch."""
    plt = pyplot()
    colours = dict(zip(NORMS, ("tab:gray", "tab:blue", "tab:red"), strict=True))
    batches = sorted({batch for _, batch in results}, reverse=True)
    fig, axes = plt.subplots(
        2, len(batches), figsize=(4.6 * len(batches), 6.4), sharex=True, squeeze=False
    )
    for (norm, batch), curves in results.items():
        column = batches.index(batch)
        epochs = range(1, len(curves["train_nll"]) + 1)
        options = {"color": colours[norm], "label": NORMS[norm]}
        axes[0, column].plot(epochs, curves["train_nll"], **options)
        axes[1, column].plot(epochs, 100 * np.asarray(curves["test_error"]), **options)
    for column, batch in enumerate(batches):
        axes[0, column].set(title=f"batch size {batch}", ylabel="training NLL", yscale="log")
        axes[1, column].set(xlabel="epoch", ylabel="test error (%)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
