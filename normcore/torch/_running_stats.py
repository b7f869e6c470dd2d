"""The lock that keeps a module's running-statistics update whole under concurrent calls.

A training forward of a batch or instance norm reads the running statistics,
computes new ones and copies them back. Two threads calling one module at
once (torch releases the GIL inside its operations) could otherwise both read
the old values, and one update would be lost: a smaller ``num_batches_tracked``
and, with ``momentum=None``, a wrong cumulative average. Each module holds its
own lock, so different modules (and ``DataParallel`` replicas) never wait for
each other; eval-mode forwards take no lock.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["RunningStatsLock"]


class RunningStatsLock:
    """Mixin for ``torch.nn.Module`` subclasses: ``self._running_lock``, one per module.

    A ``threading.Lock`` cannot be pickled or deep-copied, so it is left out of
    the pickled state and a fresh one is made on unpickling, ``copy.deepcopy``
    and ``DataParallel`` replication (a replica must not share its original's).
    """

    _running_lock: threading.Lock

    def _make_running_lock(self) -> None:
        # object.__setattr__: torch.nn.Module.__setattr__ has no business with a lock
        object.__setattr__(self, "_running_lock", threading.Lock())

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_running_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._make_running_lock()

    def _replicate_for_data_parallel(self):
        replica = super()._replicate_for_data_parallel()
        replica._make_running_lock()
        return replica
