"""Seeds derived from their parts, the same in every process, rank and Python version (Python's
`hash` is salted per process): ICL draws, training orders, held-out splits, sampling batches."""

import hashlib


def stable_seed(*parts: object) -> int:
    """A seed derived from its parts that is the same in every process and Python version."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")
