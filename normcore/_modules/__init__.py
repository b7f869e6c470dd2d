"""The stateful objects: :class:`~normcore.Module` and the layers built on it.

File names match the functional API's (``layer_norm``, ``batch_norm``,
``group_norm``, ``rnn``); every layer calls the function of the same name.
"""
