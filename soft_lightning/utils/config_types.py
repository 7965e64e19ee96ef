"""Range-checked types for config values that jsonargparse does not ship (it refuses a second
name for the same restriction, so each lives here once)."""

from jsonargparse.typing import restricted_number_type

# A share in [0, 1): dropout, the held-out share of a round.
ShareBelowOne = restricted_number_type("ShareBelowOne", float, [(">=", 0), ("<", 1)])
# A share in (0, 1]: nucleus sampling's top_p, a share of GPU memory.
ShareUpToOne = restricted_number_type("ShareUpToOne", float, [(">", 0), ("<=", 1)])
