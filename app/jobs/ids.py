"""Random (version 4) UUIDs for new jobs, drawn from a buffer of random bytes that one
`os.urandom` call refills for many ids.

`uuid.uuid4()` makes one `os.urandom` call per id, and that call releases the GIL: in
an API process whose event loop drafts jobs while a thread commits the previous batch,
the loop then waits for the thread to hand the GIL back (up to Python's 5 ms switch
interval) once per job. The bytes are the same kernel randomness; a forked child
starts with a buffer of its own, so no two processes share an id.
"""

from __future__ import annotations

import os
import threading
import uuid

IDS_PER_REFILL = 256
_BYTES = 16


class _RandomIds:
    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0

    def next(self) -> uuid.UUID:
        with self._lock:
            if self._offset >= len(self._buffer):
                self._buffer, self._offset = os.urandom(_BYTES * IDS_PER_REFILL), 0
            raw = self._buffer[self._offset : self._offset + _BYTES]
            self._offset += _BYTES
        return uuid.UUID(bytes=raw, version=4)


_ids = _RandomIds()


def new_job_id() -> uuid.UUID:
    """A random UUID (version 4), as uuid.uuid4() makes."""
    return _ids.next()
