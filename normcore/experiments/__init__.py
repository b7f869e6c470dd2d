"""Reproducible experiments built on normcore's public functions.

One module per experiment, each returning its numbers (nothing runs at import):
:mod:`~normcore.experiments.batch_size` (MLP without norm, with batch norm and
with layer norm at batch 128 and 4), :mod:`~normcore.experiments.rnn_digits`
(LSTM vs LN-LSTM) and :mod:`~normcore.experiments.invariance` (Table 1 of Ba et
al., measured). ``normcore experiment NAME`` runs them from the command line.
Optional dependencies (scikit-learn, matplotlib, tqdm) are imported inside the
functions that need them: ``pip install normcore[experiments]``.
"""
