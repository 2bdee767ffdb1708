"""Seeds derived from named parts, never from global state or call order."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' "/"-joined text (blake2b): the same parts give the same
    seed in every process, on every rank, after any resume."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
