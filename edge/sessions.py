"""Signed-out page sessions. A session is a signed token (a JWT) that would otherwise live its whole hour: signing out
records its id (`jti`) here until the token expires, and every edge worker of the machine refuses it from then on,
after a restart too.

The ids live in one file of fixed size that the workers map (edge/limits.py SharedSlots): buckets of a few entries,
chosen by a keyed hash of the id, so nobody can aim sign-outs at one bucket. An entry is free again once its token
has expired. A bucket whose entries are all live refuses the sign-out, which the page reports (the token stays valid
until its owner tries again), rather than forgetting an earlier sign-out and so bringing its token back to life.
"""

import pathlib
import struct

from edge.limits import SharedSlots, slot_hash_key

ENTRIES_PER_BUCKET = 8
BUCKETS = 1 << 14  # 131,072 sessions signed out within an hour; 2 MiB


class SignedOutSessions(SharedSlots):
    ENTRY = struct.Struct("<Qd")  # the id's keyed hash (0: free), when its token expires (wall-clock seconds)
    SLOT = struct.Struct("<" + "Qd" * ENTRIES_PER_BUCKET)

    def __init__(self, path: pathlib.Path, buckets: int = BUCKETS) -> None:
        super().__init__(path, buckets, hash_key=slot_hash_key(path))

    def signed_out(self, token_id: str, now_s: float) -> bool:
        """Whether the token with this id was signed out (and has not expired since)."""
        key_hash, offset = self._slot(token_id)
        try:
            entries = self.SLOT.unpack_from(self._map, offset)
        finally:
            self._unlock(offset)
        return any(entries[index] == key_hash and entries[index + 1] > now_s for index in range(0, len(entries), 2))

    def sign_out(self, token_id: str, expires_at_s: float, now_s: float) -> bool:
        """Record the token's id until it expires; False when its bucket has no free entry (nothing recorded)."""
        key_hash, offset = self._slot(token_id)
        try:
            entries = self.SLOT.unpack_from(self._map, offset)
            hashes, expiries = entries[0::2], entries[1::2]
            if key_hash in hashes:
                index = hashes.index(key_hash)
                expires_at_s = max(expires_at_s, expiries[index])
            else:
                index = next((index for index, until in enumerate(expiries)
                              if hashes[index] == 0 or until <= now_s), None)
                if index is None:
                    return False
            self.ENTRY.pack_into(self._map, offset + index * self.ENTRY.size, key_hash, expires_at_s)
        finally:
            self._unlock(offset)
        return True
