"""The few calls the release plane makes to the model server, through its public HTTP API.

v2 repository load/unload, the traffic endpoint, `/metrics` (5xx counts of the scoring
endpoints), and version-pinned v2 inference for the servability check.

Versions: callers speak the registry's semver (`v0.0.7`); the server knows the integer version
folders (`7`). The client maps both ways at this boundary (`driftloop.model_repository`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx

from driftloop.model_repository import registry_name, version_number
from driftloop.protocol import SCORING_ENDPOINTS
from driftloop.release.errors import ReleaseError, ServabilityFailed, ServerDown


def server_version(version: str) -> str:
    """The server's name (integer folder) of a registry version: `v0.0.7` -> `7`."""
    return str(version_number(version))


class ServerClient:
    """The few calls the release plane makes to the model server (its public HTTP API).

    Args:
        url: base URL, e.g. `http://127.0.0.1:8080`.
        timeout_s: per-request timeout, seconds.
        api_key: sent as `x-api-key` when set (default: `DRIFTLOOP_API_KEY`).
        setting: where `url` came from (`driftloop.address.ServerAddress.setting`), named when the
            server does not answer.
    """

    def __init__(
        self, url: str, timeout_s: float = 30.0, api_key: str | None = None, setting: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.setting = setting or "the server URL (DRIFTLOOP_SERVER_URL or release.server_url)"
        key = api_key if api_key is not None else os.environ.get("DRIFTLOOP_API_KEY")
        headers = {"x-api-key": key} if key else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            from driftloop.address import ServerAddress

            raise ServerDown(ServerAddress(self.url, self.setting).unreachable(type(exc).__name__)) from None

    @staticmethod
    def _error(resp: httpx.Response) -> str:
        try:
            return str(resp.json().get("error", resp.text))
        except ValueError:
            return resp.text[:200]

    def check_live(self) -> None:
        """Raises `ServerDown` unless `/v2/health/live` answers 200."""
        resp = self._call("GET", "/v2/health/live")
        if resp.status_code != 200:
            raise ServerDown(f"model server at {self.url}: /v2/health/live answered {resp.status_code}")

    def traffic(self, model: str, *, raw: bool = False) -> dict[str, float]:
        """{version: percent} now; {} when the model is not loaded.

        Args:
            model: model name.
            raw: keys as the server names versions (folder names) instead of registry semver.
        """
        resp = self._call("GET", f"/v2/repository/models/{model}/traffic")
        if resp.status_code == 404:
            return {}
        if resp.status_code != 200:
            raise ReleaseError(f"traffic of {model}: {resp.status_code} {self._error(resp)}")
        name = str if raw else registry_name
        return {name(k): float(v) for k, v in resp.json()["traffic_pct"].items()}

    def set_traffic(self, model: str, weights: Mapping[str, float], *, raw: bool = False) -> dict[str, float]:
        """Set explicit weights (sticky per request id) and return the effective percentages.

        Args:
            model: model name.
            weights: {registry semver (or, with `raw`, the server's folder name): weight}.
            raw: see `traffic`.
        """
        name = str if raw else server_version
        body = {"weights": {name(v): float(w) for v, w in weights.items()}}
        resp = self._call("POST", f"/v2/repository/models/{model}/traffic", json=body)
        if resp.status_code != 200:
            raise ReleaseError(f"setting traffic of {model} to {dict(weights)}: {self._error(resp)}")
        back = str if raw else registry_name
        return {back(k): float(v) for k, v in resp.json()["traffic_pct"].items()}

    def loaded_versions(self, model: str, *, raw: bool = False) -> list[str]:
        """Versions of `model` in state READY (registry semver; with `raw`, the server's folder names)."""
        resp = self._call("GET", "/v2/repository/index")
        if resp.status_code != 200:
            raise ReleaseError(f"repository index: {resp.status_code} {self._error(resp)}")
        name = str if raw else registry_name
        return [name(r["version"]) for r in resp.json() if r["name"] == model and r["state"] == "READY"]

    def load(self, model: str, version: str) -> None:
        """Load (verify, warm up) a version; raises `ServabilityFailed` with the server's reason."""
        resp = self._call(
            "POST",
            f"/v2/repository/models/{model}/load",
            json={"parameters": {"version": server_version(version)}},
        )
        if resp.status_code != 200:
            raise ServabilityFailed(f"server refused to load {model} {version}: {self._error(resp)}")

    def unload(self, model: str, version: str) -> None:
        """Unload a version; a version that is not loaded is not an error."""
        resp = self._call(
            "POST",
            f"/v2/repository/models/{model}/unload",
            json={"parameters": {"version": server_version(version)}},
        )
        if resp.status_code not in (200, 404):
            raise ReleaseError(f"unloading {model} {version}: {self._error(resp)}")

    def infer(self, model: str, version: str, body: dict) -> httpx.Response:
        """Version-pinned v2 inference (bypasses the traffic split)."""
        return self._call("POST", f"/v2/models/{model}/versions/{server_version(version)}/infer", json=body)

    def cpu_cost(self, model: str) -> dict[str, float]:
        """{server version: total CPU seconds per 1,000 predictions} of `model`, from `/metrics`.

        The server's `driftloop_cpu_seconds_per_1k_predictions{part="total"}` (serving/metrics.py):
        each version's own inference CPU plus an equal share per prediction of the rest of the
        process's CPU, since the server started. Versions that scored nothing are absent.

        Raises:
            ReleaseError: /metrics did not answer 200.
        """
        from prometheus_client.parser import text_string_to_metric_families

        resp = self._call("GET", "/metrics")
        if resp.status_code != 200:
            raise ReleaseError(f"/metrics answered {resp.status_code}")
        out = {}
        for family in text_string_to_metric_families(resp.text):
            if family.name == "driftloop_cpu_seconds_per_1k_predictions":
                for s in family.samples:
                    if s.labels.get("model") == model and s.labels.get("part") == "total":
                        out[s.labels["version"]] = float(s.value)
        return out

    def server_errors(self) -> int:
        """Total 5xx responses of the scoring endpoints so far (from `/metrics`)."""
        from prometheus_client.parser import text_string_to_metric_families

        resp = self._call("GET", "/metrics")
        if resp.status_code != 200:
            raise ReleaseError(f"/metrics answered {resp.status_code}")
        total = 0
        for family in text_string_to_metric_families(resp.text):
            if family.name != "driftloop_requests":
                continue
            for sample in family.samples:
                if (
                    sample.name.endswith("_total")
                    and sample.labels.get("endpoint") in SCORING_ENDPOINTS
                    and sample.labels.get("status", "").startswith("5")
                ):
                    total += int(sample.value)
        return total
