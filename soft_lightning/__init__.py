"""Step-On-Feet Tuning (SOFT): bootstrapped self-alignment as a Lightning training module."""

__version__ = "0.1.0"
