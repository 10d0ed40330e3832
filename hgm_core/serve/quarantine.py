"""Jobs that crash the compute, remembered so they cannot crash it again (docs/architecture.md §5).

A job is known by its `fingerprint`: its arrays and the options that steer the compute, not its id
or deadline, so a client's retry or a re-sent camera frame is recognised. Each crash of a process
running the job is a strike; at `strikes` strikes the job is quarantined and refused from then on.
The broker counts workers lost while holding the job; a supervised worker counts compute children
lost while running it.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

from hgm_core.serve.protocol import Message

QUARANTINE_STRIKES = 2
"""Crashes after which a job is quarantined (issue #17: a job that kills its compute twice)."""


def fingerprint(msg: Message) -> bytes:
    """A digest of what the compute sees of `msg`: its array specs and bytes and its options."""
    h = hashlib.blake2b(digest_size=16)
    options = {k: msg.header.get(k) for k in ("kind", "stages", "mesh", "stream")}
    h.update(json.dumps([options, msg.header["arrays"]], sort_keys=True).encode())
    for array in msg.arrays.values():
        h.update(array)  # decoded arrays are C-contiguous views of the frames
    return h.digest()


class Quarantine:
    """Strikes per job fingerprint and the quarantined ones, the `capacity` most recent of each.

    Args:
        strikes: crashes that quarantine a job.
        capacity: fingerprints remembered (oldest forgotten first), so memory stays bounded.
    """

    def __init__(self, strikes: int = QUARANTINE_STRIKES, capacity: int = 1024) -> None:
        if strikes < 1:
            raise ValueError("strikes must be >= 1")
        self.strikes = strikes
        self.capacity = capacity
        self._strikes: OrderedDict[bytes, int] = OrderedDict()
        self._reasons: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._reasons)

    def reason(self, digest: bytes) -> str | None:
        """Why the job is quarantined, or None if it is not."""
        return self._reasons.get(digest)

    def strike(self, digest: bytes, what: str) -> str | None:
        """Count one crash of the job (`what` says what was lost); the quarantine reason once the
        job has reached `strikes` crashes, else None (the job may be tried again)."""
        count = self._strikes.pop(digest, 0) + 1
        self._strikes[digest] = count
        _trim(self._strikes, self.capacity)
        if count < self.strikes:
            return None
        reason = f"quarantined: the job was running when {what} died, {count} times; it is refused from now on"
        self._reasons[digest] = reason
        _trim(self._reasons, self.capacity)
        return reason


def _trim(entries: OrderedDict, capacity: int) -> None:
    while len(entries) > capacity:
        entries.popitem(last=False)
