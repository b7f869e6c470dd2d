"""The public functions: validate every argument, build the layout, call the dispatch.

One file per method (``layer_norm``, ``batch_norm``, ``group_norm``,
``moments``, ``weight_norm``, ``rnn``, ``rnn_params``); no math of their own
beyond arranging axes. ``normcore/__init__.py`` re-exports the public names.
"""
