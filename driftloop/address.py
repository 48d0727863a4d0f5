"""The model server's address: one setting, read by every command.

`release.server_url` in params.yaml says where the model server listens; the environment variable
`DRIFTLOOP_SERVER_URL` overrides it (for one shell, a CI job, a container), and a command's own
`--url` overrides both. `driftloop serve` binds to the host and port of the same address, so
serving on another port is one change: `export DRIFTLOOP_SERVER_URL=http://127.0.0.1:9090` (or the
params key, committed, which a triggered retraining run also reads).

Every message about a server that does not answer names the address tried and the setting it came
from (`ServerAddress.setting`), so the fix is one edit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ENV_VAR = "DRIFTLOOP_SERVER_URL"
PARAMS_KEY = "release.server_url"
DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class ServerAddress:
    """A base URL and where it came from.

    Attributes:
        url: base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
        setting: what set it and how to change it, e.g. `release.server_url in params.yaml` or
            `DRIFTLOOP_SERVER_URL`; used verbatim in error messages.
    """

    url: str
    setting: str

    @property
    def host(self) -> str:
        """The host name or address (`127.0.0.1`)."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """The TCP port; the scheme's default (80/443) when the URL names none."""
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def unreachable(self, detail: str) -> str:
        """One line for a server that does not answer: the address, where it came from, the fix."""
        return (
            f"the model server at {self.url} does not answer ({detail}): start one with `driftloop serve`, "
            f"or set {self.setting} to the address it listens on"
        )


def check_url(url: str, setting: str) -> str:
    """`url` without its trailing slash; raises `ParamsError` unless it is http(s)://host[:port].

    Raises:
        ParamsError: naming `setting` and the expected form.
    """
    from driftloop.errors import ParamsError

    parts = urlsplit(url.strip())
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ParamsError(f"{setting}: {url!r} is not a server address; write it as http://HOST:PORT")
    return url.strip().rstrip("/")


def server_address(
    params_path: str | os.PathLike[str] | None = "params.yaml",
    *,
    url: str | None = None,
    url_option: str = "--url",
    configured: str | None = None,
) -> ServerAddress:
    """Where the model server is: `url` (a command's option), else `DRIFTLOOP_SERVER_URL`, else
    `release.server_url` of `params_path` (or `configured`, the value the caller already loaded),
    else http://127.0.0.1:8080.

    Args:
        params_path: params file to read `release.server_url` from; a missing file or None means
            the default.
        url: an explicit address (the command's `url_option`), wins over everything.
        url_option: the option's name, for messages.
        configured: `release.server_url` already loaded by the caller (skips reading the file).

    Raises:
        ParamsError: the chosen value is not http(s)://host[:port], or params.yaml is invalid.
    """
    if url:
        return ServerAddress(check_url(url, url_option), url_option)
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return ServerAddress(check_url(env, ENV_VAR), ENV_VAR)
    where = f"{PARAMS_KEY} in {Path(params_path).name if params_path else 'params.yaml'} (or {ENV_VAR})"
    if configured is None and params_path is not None and Path(params_path).is_file():
        from driftloop.config import ReleaseParams, load_section

        configured = load_section(params_path, "release", ReleaseParams).server_url
    if configured is None:
        return ServerAddress(DEFAULT_URL, f"the default of {PARAMS_KEY} (set {ENV_VAR} or {PARAMS_KEY})")
    return ServerAddress(check_url(configured, PARAMS_KEY), where)
