"""The digits experiment trains (loss falls) through normcore on NumPy and on torch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from normcore.experiments.rnn_digits import load_digit_sequences, train


@pytest.fixture(scope="module")
def small_data():
    data = load_digit_sequences(seed=0)
    assert data["x_train"].shape[1:] == (8, 8) and data["x_test"].shape[1:] == (8, 8)
    assert data["x_train"].min() >= 0.0 and data["x_train"].max() <= 1.0
    return {"x_train": data["x_train"][:256], "y_train": data["y_train"][:256],
            "x_test": data["x_test"][:128], "y_test": data["y_test"][:128]}  # fmt: skip


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: torch's intra-op threads cost more than they save (see the example)."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["lstm", "ln-lstm"])
def test_training_lowers_the_loss(small_data, library, layer_norm):
    pytest.importorskip(library)
    curves = train(layer_norm=layer_norm, backend=library, hidden=16, epochs=3, lr=2e-2,
                   data=small_data)  # fmt: skip
    losses = curves["train_loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]
    assert curves["test_accuracy"][-1] > 0.3  # chance is 0.1
