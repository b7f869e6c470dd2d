"""normcore's built-in backend adapters (installed as ``normcore.backends``).

One module per array library. Each is registered as an entry point in the
``normcore.backends`` group, exactly as a third-party adapter would be, and
imports its library only when an array of that library is being processed.
"""
