"""The installer's exceptions; the tree is drawn in the package docstring."""

from __future__ import annotations


class InstallError(Exception):
    """One host could not be handled; ``str(exc)`` is the reason shown in the summary."""


class HostKeyError(InstallError):
    """Unknown host key without --accept-new, or a key that changed: nothing was sent to the host."""


class ConnectError(InstallError):
    """The SSH connection failed: unreachable, refused, timed out, or authentication failed."""


class RemoteError(InstallError):
    """A remote step failed."""

    def __init__(self, step: str, status: int | None, stderr: str) -> None:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        super().__init__(
            f"{step} failed (exit {status}): {tail}" if tail else f"{step} failed (exit {status})"
        )
        self.step = step
        self.status = status


class EnrolError(InstallError):
    """The agent could not enrol, or the collector did not see it in time."""
