"""The reference math, written once against the Array API standard.

``primitive`` (the normalization primitive and its backward), ``moments``
(two-pass moments, Chan's merge), ``running`` (batch norm's running
statistics), ``cells`` and ``recurrence`` (the recurrent cells and the
sequence loop with backpropagation through time). Nothing here imports an
array library: every function sees only the namespace ``xp`` of its inputs.
"""
