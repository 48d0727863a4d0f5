"""The release plane's errors: each message says what holds and what to do."""

from __future__ import annotations

from driftloop.errors import DriftloopError


class ReleaseError(DriftloopError):
    """A release or rollback could not start or could not finish; the message says what holds."""


class ServerDown(ReleaseError):
    """The model server does not answer at its URL."""


class ReleaseLocked(ReleaseError):
    """Another release or rollback holds the lock."""


class ServabilityFailed(ReleaseError):
    """The server refused to load the version, or its sample answer had the wrong shape."""
