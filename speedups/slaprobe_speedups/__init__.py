"""Compiled hot paths for the slaprobe collector.

Each module here has a pure-Python twin in slaprobe itself that gives the same answers; slaprobe
imports these when they are installed and falls back otherwise. Tests hold the two equal.
"""
