"""Probes: one module per probe type behind the :class:`~probes.base.Prober` seam."""

from .base import ErrorKind, PhaseTrace, ProbeFailure, Prober, ProbeResult, run_probe
from .registry import PROBERS, build_prober

__all__ = [
    "PROBERS",
    "ErrorKind",
    "PhaseTrace",
    "ProbeFailure",
    "ProbeResult",
    "Prober",
    "build_prober",
    "run_probe",
]
