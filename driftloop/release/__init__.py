"""The release plane: register a package, release it (canary or blue-green), analyse, promote or roll back.

Modules, each with one job:
    client        `ServerClient`: the model server's public HTTP API, as the plane uses it
    lock          `ReleaseLock`: one release or rollback at a time
    registration  `register_package`: verify, push, tag the producing commit
    install       put a registered version into the model repository; the servability check
    analysis      canary rules (requests, errors, service time, PSI, paired ROC AUC) and the waiting loop
    plane         `open_plane`, `release_version`, `rollback_release`, history
    cli           `driftloop register | release | rollback | history`

Callers import from here: `from driftloop.release import open_plane, release_version`.
"""

from __future__ import annotations

from driftloop.registry import RegistryError
from driftloop.release.analysis import Analysis, analyse, auc_check, run_analysis, stable_scorer
from driftloop.release.client import ServerClient
from driftloop.release.errors import ReleaseError, ReleaseLocked, ServabilityFailed, ServerDown
from driftloop.release.install import check_servable, install_version, uninstall_version
from driftloop.release.lock import ReleaseLock
from driftloop.release.plane import (
    Outcome,
    ReleasePlane,
    open_plane,
    parse_time,
    previous_stable,
    release_version,
    retire_version,
    rollback_release,
    served_at,
    update_champion,
    version_table,
)
from driftloop.release.registration import PackageRegistry, Registered, register_package
from driftloop.stats import PairedAUC, delong, psi, psi_noise

__all__ = [
    "Analysis",
    "Outcome",
    "PackageRegistry",
    "ReleaseError",
    "ReleaseLock",
    "ReleaseLocked",
    "ReleasePlane",
    "Registered",
    "RegistryError",
    "ServabilityFailed",
    "ServerClient",
    "ServerDown",
    "analyse",
    "auc_check",
    "delong",
    "PairedAUC",
    "stable_scorer",
    "check_servable",
    "install_version",
    "open_plane",
    "parse_time",
    "previous_stable",
    "psi",
    "psi_noise",
    "register_package",
    "release_version",
    "retire_version",
    "rollback_release",
    "run_analysis",
    "served_at",
    "uninstall_version",
    "update_champion",
    "version_table",
]
