"""The ``normcore`` command's tools (``info``, ``check``, ``bench``) and what the test suite,
the benchmarks and ``bench`` share (the backend table, benchmark data)."""
