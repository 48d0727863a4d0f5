"""Per-version inference statistics in the shape of Triton's statistics extension.

`GET /v2/models/{name}[/versions/{version}]/stats` answers
`{"model_stats": [{"name", "version", "last_inference", "inference_count", "execution_count",
"inference_stats": {"success", "fail", "queue", "compute_input", "compute_infer",
"compute_output"}: {"count", "ns"}}, "batch_stats": [...]}]}`, the same fields Triton's
`ModelStatistics` has (triton-inference-server/server docs/protocol/extension_statistics.md), so
`tritonclient.http.InferenceServerClient.get_inference_statistics` reads it unchanged.

What each duration measures here (nanoseconds, summed over requests):
    compute_input   arrival of the request to its feeds being ready (body read, decode, validation)
    queue           waiting in the micro-batcher (time in the batcher less the batch's session.run)
    compute_infer   the `session.run` of the batch the request rode in
    compute_output  encoding the response
    success         arrival to the response being encoded
    fail            arrival to the error, for requests that reached a model and then failed
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class _VersionStats:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_PHASES, 0))
    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_PHASES, 0))
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, list[int]] = field(default_factory=dict)  # batch rows -> [count, infer ns]


class InferenceStats:
    """Counters per (model, version).

    Written only from the event loop's thread (the handlers and the batcher's `on_batch`), so
    updates need no lock; a reader copies under the GIL.
    """

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], _VersionStats] = {}

    def _get(self, name: str, version: str) -> _VersionStats:
        s = self._stats.get((name, version))
        if s is None:
            s = self._stats.setdefault((name, version), _VersionStats())
        return s

    def request(
        self,
        name: str,
        version: str,
        rows: int,
        success_s: float,
        compute_input_s: float,
        queue_s: float,
        compute_infer_s: float,
        compute_output_s: float,
    ) -> None:
        """Record one answered request: its rows and each phase's seconds."""
        s = self._get(name, version)
        s.inference_count += rows
        s.last_inference_ms = int(time.time() * 1000)
        counts, ns = s.counts, s.ns
        for phase, seconds in (
            ("success", success_s),
            ("compute_input", compute_input_s),
            ("queue", queue_s),
            ("compute_infer", compute_infer_s),
            ("compute_output", compute_output_s),
        ):
            counts[phase] += 1
            ns[phase] += int(seconds * 1e9)

    def fail(self, name: str, version: str, seconds: float) -> None:
        """Record a request that reached `version` and then failed, after `seconds`."""
        s = self._get(name, version)
        s.counts["fail"] += 1
        s.ns["fail"] += int(seconds * 1e9)

    def batch(self, name: str, version: str, rows: int, run_s: float) -> None:
        """Record one `session.run` of `rows` rows that took `run_s` seconds."""
        s = self._get(name, version)
        s.execution_count += 1
        entry = s.batches.setdefault(rows, [0, 0])
        entry[0] += 1
        entry[1] += int(run_s * 1e9)

    def model_stats(self, name: str, versions: list[str]) -> dict:
        """Triton's statistics body for `versions` of `name` (zeros for a version never used)."""
        out = []
        for version in versions:
            s = self._stats.get((name, version)) or _VersionStats()
            out.append(
                {
                    "name": name,
                    "version": version,
                    "last_inference": s.last_inference_ms,
                    "inference_count": s.inference_count,
                    "execution_count": s.execution_count,
                    "inference_stats": {
                        **{p: {"count": s.counts[p], "ns": s.ns[p]} for p in _PHASES},
                        "cache_hit": {"count": 0, "ns": 0},
                        "cache_miss": {"count": 0, "ns": 0},
                    },
                    "batch_stats": [
                        {
                            "batch_size": rows,
                            "compute_input": {"count": c, "ns": 0},
                            "compute_infer": {"count": c, "ns": ns},
                            "compute_output": {"count": c, "ns": 0},
                        }
                        for rows, (c, ns) in sorted(s.batches.items())
                    ],
                }
            )
        return {"model_stats": out}
