"""Prefect's server on PostgreSQL: the drift -> retrain trigger works there as on SQLite.

A real PostgreSQL server (the Debian `postgresql` package's binaries: `initdb`, `pg_ctl`) is
created in a temporary folder, listens on a free loopback port, and is torn down after. A real
`prefect server start` runs against it (PREFECT_API_DATABASE_CONNECTION_URL with asyncpg, its own
migrations, services on), and the same check as tests/flows/test_trigger.py runs against that
server's API; the flow runs the trigger created are then read back from PostgreSQL itself.

Without PostgreSQL installed the test is skipped, except under CI=true, where it fails (.ci/run
installs the `postgresql` package when its binaries are missing).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for
from tests.flows.test_trigger import check_drift_event_starts_retraining

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, else in the Debian package's folder (/usr/lib/postgresql/<N>/bin)."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth, fsync off); yields its asyncpg URL."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        why = "PostgreSQL is not installed (initdb/pg_ctl not found; apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    # PostgreSQL refuses to run as root: as root, run it as the package's `postgres` user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="driftloop-pg-"))
    if as_user:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def prefect_on_postgres(postgres_url, tmp_path_factory):
    """`prefect server start` on the PostgreSQL cluster; the client settings point at it while in use."""
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port, home = free_port(), tmp_path_factory.mktemp("prefect-home")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": postgres_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": ""}  # fmt: skip
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    api = f"http://127.0.0.1:{port}/api"
    try:
        def healthy() -> bool:
            if server.poll() is not None:
                pytest.fail(f"prefect server on PostgreSQL exited:\n{(home / 'server.log').read_text()[-3000:]}")
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        # migrations on a fresh database: 10-30 s on 2 busy cores
        wait_for(healthy, 240, "the prefect server on PostgreSQL (its log: server.log in the test's folder)", interval_s=0.5)
        # The events worker is one per client type and kwargs: name this server's URL, or a worker
        # made earlier in the session for the SQLite harness would receive the events.
        EventsWorker.set_client_override(PrefectEventsClient, api_url=api)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield api
        EventsWorker.drain_all(timeout=10)
    finally:
        EventsWorker.set_client_override(None)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_drift_trigger_on_postgres(prefect_on_postgres, postgres_url, tmp_path):
    import asyncio

    import asyncpg

    runs = check_drift_event_starts_retraining(tmp_path)

    async def stored() -> list:
        conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return await conn.fetch("select id, parameters from flow_run where id = $1", runs[0].id)
        finally:
            await conn.close()

    rows = asyncio.run(stored())
    assert len(rows) == 1 and '"as_of": "2013-08-31"' in rows[0]["parameters"]  # the run lives in PostgreSQL
