"""What connects a call to its kernel: validation, array-library compatibility, settings,
adapter registry and dispatch."""
