"""slaprobe: synthetic probing for service level management."""

__version__ = "0.1.0"
