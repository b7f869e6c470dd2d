"""Reproducible experiments built on normcore's public functions.

Each module exposes a function that runs the experiment and returns its
curves; nothing runs at import. Optional dependencies (scikit-learn,
matplotlib) are imported inside the functions that need them:
``pip install normcore[experiments]``.
"""
