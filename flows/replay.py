"""Replay months of the source's rows through the running model server, then send their labels.

The showcase's "feed a drifted window": the declared dataset's rows of the given calendar months
(joined, derived and labelled exactly as tasks/features.py does, from the `dataset` section of
params.yaml) go to the server's records endpoint `POST /v1/models/{name}:predict` in batches, each
batch with its own `x-request-id`; the server scores and logs them. The labels (`dataset.label`)
are then written in the prediction log's label format, joined by (request_id, row).

Also the builders the tests and benchmarks use to write a prediction log directly, in the
format of driftloop/predlog.py, without a server.

Usage:
    python -m flows.replay --months 7 8 --log-dir logs/predictions --max-rows 20000
    python -m flows.replay --months 9 10 --batch 1 --loop &     # traffic that lasts a canary

The server's address: --url, else DRIFTLOOP_SERVER_URL, else params.yaml release.server_url.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config import FeaturesParams
from driftloop.dataset import Dataset
from driftloop.errors import DriftloopError
from driftloop.paths import LOG_DIR
from driftloop.payloads import records_body
from driftloop.schema import LABEL

log = logging.getLogger(__name__)


def cut_months(tables: dict[str, pd.DataFrame], dataset: Dataset, months: Sequence[int]) -> dict[str, pd.DataFrame]:
    """Each table's rows whose local date falls in one of `months` (1..12, any year); a table
    without a time column is kept whole."""
    out = {}
    for name, frame in tables.items():
        date = dataset.local_date(frame, name)
        out[name] = frame if date is None else frame[date.dt.month.isin(list(months)).to_numpy()]
    return out


def replay_rows(tables: dict[str, pd.DataFrame], dataset: Dataset, months: Sequence[int]) -> pd.DataFrame:
    """Labelled rows of the given calendar months (local dates, every year of the source), as the
    features stage builds them.

    Args:
        tables: the source's tables, {name: frame} (`tasks.snapshot.read_source`).
        dataset: the declaration.
        months: calendar months (1..12). Each table is cut by its own local date (a table without
            a time column is kept whole).

    Returns:
        The features (typed by `Dataset.coerce_features`), `label` (int8), the time column,
        `month`, the row id, in time order. Rows without a label are dropped.
    """
    from tasks.features import build_features

    splits, _ = build_features(cut_months(tables, dataset, months), dataset, FeaturesParams(test_days=1, valid_days=1))
    rows = pd.concat(splits.values(), ignore_index=True)
    return rows.sort_values(dataset.time.column, kind="stable").reset_index(drop=True)


def log_frame(
    rows: pd.DataFrame,
    scores: np.ndarray,
    *,
    features: Sequence[str],
    model: str,
    version: str = "v0.0.1",
    start: dt.datetime,
    seconds: float = 3600.0,
    request_prefix: str = "replay",
) -> pd.DataFrame:
    """Prediction-log rows (driftloop/predlog.py's columns) for `rows`, spread evenly over `seconds`.

    Args:
        rows: at least `features`.
        scores: one probability per row.
        features: the model's input columns (`dataset.feature_names`).
        model: model name.
        version: model version that "answered".
        start: time of the first row (UTC).
        seconds: the rows' `ts` span this many seconds from `start`.
        request_prefix: request ids are `<prefix>-<i>`, one row per request (`row` 0).

    Returns:
        request_id, row, ts (UTC), model_name, model_version, `features`, score (float32), latency_ms.
    """
    n = len(rows)
    start_ts = pd.Timestamp(start).tz_convert("UTC") if pd.Timestamp(start).tzinfo else pd.Timestamp(start, tz="UTC")
    offsets = pd.to_timedelta(np.linspace(0.0, seconds, num=n, endpoint=False), unit="s")
    out = pd.DataFrame(
        {
            "request_id": [f"{request_prefix}-{i}" for i in range(n)],
            "row": np.zeros(n, dtype=np.int32),
            "ts": (start_ts + offsets).astype("datetime64[us, UTC]"),
            "model_name": model,
            "model_version": version,
        }
    )
    for c in features:
        out[c] = rows[c].to_numpy()
    out["score"] = np.asarray(scores, dtype=np.float32).reshape(-1)
    out["latency_ms"] = np.float32(1.0)
    return out


def write_log(log_dir: str | os.PathLike[str], model: str, frame: pd.DataFrame, rows_per_file: int = 100_000) -> list[Path]:
    """Write log rows as the server does: `<log_dir>/<model>/date=YYYY-MM-DD/part-*.parquet`, atomically.

    Returns:
        The files written.
    """
    from driftloop.io import write_parquet

    paths = []
    dates = frame["ts"].dt.strftime("%Y-%m-%d")
    for date, part in frame.groupby(dates, sort=True):
        for i in range(0, len(part), rows_per_file):
            path = Path(log_dir) / model / f"date={date}" / f"part-{uuid.uuid4().hex}-{i:06d}.parquet"
            write_parquet(path, part.iloc[i : i + rows_per_file].reset_index(drop=True))
            paths.append(path)
    return paths


def labels_for(log: pd.DataFrame, rows: pd.DataFrame, observed_at: dt.datetime | None = None) -> pd.DataFrame:
    """Label rows (driftloop/predlog.py's label format) for the log rows built from `rows`.

    Args:
        log: the prediction-log frame (same order as `rows`).
        rows: the flights with `label`.
        observed_at: when the labels "arrived" (UTC); default now.

    Returns:
        request_id, row, label (0/1), observed_at.
    """
    when = pd.Timestamp(observed_at or dt.datetime.now(dt.UTC))
    return pd.DataFrame(
        {
            "request_id": log["request_id"].to_numpy(),
            "row": log["row"].astype(np.int64).to_numpy(),
            "label": rows[LABEL].astype(np.int64).to_numpy(),
            "observed_at": pd.Series([when] * len(log)).dt.tz_convert("UTC") if when.tzinfo else when.tz_localize("UTC"),
        }
    )


def replay(
    url: str,
    model: str,
    rows: pd.DataFrame,
    *,
    features: Sequence[str],
    batch: int = 100,
    log_dir: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    timeout_s: float = 30.0,
    label_every: int = 50,
    seed: int | None = None,
    duration_s: float | None = None,
    rate: float | None = None,
    stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    setting: str | None = None,
) -> dict:
    """Send `rows` to the server's records endpoint in batches; write their labels to the log.

    One pass over `rows` by default. With `duration_s` the rows are sent again and again (each
    pass with new request ids, so labels still join one-to-one) until `duration_s` seconds of
    `clock` have passed; with `duration_s=math.inf` until `stop()` says so (a loop that lasts a
    canary: the release plane judges a canary on live traffic only).

    Args:
        url: server base URL, e.g. http://127.0.0.1:8080.
        model: model name on the server.
        rows: rows with `features` and `label` (see `replay_rows`).
        features: the model's input columns, sent as the records' keys (`dataset.feature_names`).
        batch: rows per request (each request gets an `x-request-id`; labels join by (id, row)).
        log_dir: the server's `--log-dir`; when given, labels are written there, one file per
            `label_every` requests, as the replay goes.
        api_key: the server's API key, if it requires one.
        timeout_s: per-request timeout, s.
        label_every: requests between two label files.
        seed: makes the request ids (`replay-<run>-<n>`) reproducible, and with them which
            version answers each request (the traffic split hashes the request id); None: random.
        duration_s: keep replaying (cycling through `rows`) for this many seconds; None: one pass.
        rate: at most this many requests per second (None: as fast as the server answers).
        stop: polled before each request; True ends the replay (after its labels are written).
        clock, sleep: monotonic seconds and the wait used by `rate` (injectable for tests).
        setting: where `url` came from (`driftloop.address.ServerAddress.setting`), for errors.

    Returns:
        {"rows": sent, "requests": n, "passes": started passes, "versions": {version: rows},
        "labels": the labels folder or None}.

    Raises:
        ServerUnreachable: the server does not answer at `url` (the message names the setting).
        httpx.HTTPStatusError: the server answered an error (e.g. 404: the model is not loaded).
    """
    import httpx

    from driftloop.address import ServerAddress
    from driftloop.predlog import write_labels

    if len(rows) == 0:
        raise ValueError("replay: no rows to send")
    headers = {"x-api-key": api_key} if api_key else {}
    run = uuid.uuid4().hex[:8] if seed is None else f"{np.random.default_rng(seed).integers(2**32):08x}"
    labels = rows[LABEL].astype(np.int64).to_numpy()
    feature_frame = rows[list(features)]
    pending: list[tuple[str, int, int]] = []  # (request id, row in request, row in `rows`) not yet labelled
    versions: dict[str, int] = {}
    sent, chunks, requests, passes = 0, 0, 0, 0
    started = clock()
    stop = stop or (lambda: False)

    def flush_labels() -> None:
        # Labels arrive shortly after their flights, chunk by chunk, as they would from an
        # arrivals feed: a canary judged meanwhile sees them (see driftloop.release.quality_check).
        nonlocal chunks
        if log_dir is None or not pending:
            return
        frame = pd.DataFrame(
            {
                "request_id": [r for r, _, _ in pending],
                "row": np.array([j for _, j, _ in pending], dtype=np.int64),
                "label": labels[[k for _, _, k in pending]],
                "observed_at": pd.Timestamp(dt.datetime.now(dt.UTC)),
            }
        )
        write_labels(log_dir, model, frame, name=f"replay-{run}-{chunks:05d}")
        chunks += 1
        pending.clear()

    i = 0
    try:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=headers) as client:
            while not stop():
                if i >= len(rows):  # a pass ended
                    if duration_s is None:
                        break
                    i = 0
                if duration_s is not None and clock() - started >= duration_s:
                    break
                passes += i == 0
                if rate:
                    wait = started + requests / rate - clock()
                    if wait > 0:
                        sleep(wait)
                part = feature_frame.iloc[i : i + batch]
                rid = f"replay-{run}-{requests:06d}"
                resp = client.post(f"/v1/models/{model}:predict", json=records_body(part), headers={"x-request-id": rid})
                resp.raise_for_status()
                body = resp.json()
                v = str(body.get("model_version") or resp.headers.get("x-model-version", "?"))
                versions[v] = versions.get(v, 0) + len(part)
                pending += [(rid, j, i + j) for j in range(len(part))]
                sent += len(part)
                requests += 1
                i += batch
                if requests % label_every == 0:
                    flush_labels()
                if requests % 50 == 1:
                    log.info("replay: %d rows sent (pass %d)", sent, passes)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.RemoteProtocolError) as exc:
        flush_labels()
        raise ServerUnreachable(ServerAddress(url.rstrip("/"), setting or "--url").unreachable(type(exc).__name__)) from None
    flush_labels()
    labels_dir = f"{str(log_dir).rstrip('/')}/{model}/labels" if log_dir is not None and chunks else None
    return {"rows": sent, "requests": requests, "passes": passes, "versions": versions, "labels": labels_dir}


class ServerUnreachable(DriftloopError):
    """The model server does not answer at the replay's URL."""


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.replay`: replay months of the declared dataset through a running server.

    The server's address is the one every driftloop command uses (`driftloop.address`): `--url`,
    else DRIFTLOOP_SERVER_URL, else params.yaml `release.server_url`. `--duration S` keeps the
    traffic flowing for S seconds, `--loop` until SIGINT/SIGTERM (both: as long as a canary needs).
    A server that does not answer, or answers an error, is one `error:` line and exit 1.
    """
    import httpx

    from driftloop.address import server_address
    from driftloop.config import DataParams, ReleaseParams, load_section
    from driftloop.stage import configure_logging
    from tasks.snapshot import read_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="server base URL; default $DRIFTLOOP_SERVER_URL, else release.server_url")
    parser.add_argument("--params", default="params.yaml", help="its dataset/data say what to read; release.server_url where to send")
    parser.add_argument("--model", default=None, help="model name on the server; default params.yaml release.model")
    parser.add_argument("--months", type=int, nargs="+", default=[7, 8], help="calendar months to replay (local dates)")
    parser.add_argument("--max-rows", type=int, default=20_000, help="sample this many rows (0 = all)")
    parser.add_argument("--batch", type=int, default=100, help="rows per request")
    parser.add_argument("--log-dir", default=LOG_DIR, help="the server's --log-dir (labels go there)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-every", type=int, default=50, help="requests between two label files")
    parser.add_argument("--duration", type=float, default=None, help="keep replaying (cycling the rows) this many seconds")
    parser.add_argument("--loop", action="store_true", help="keep replaying until SIGINT/SIGTERM")
    parser.add_argument("--rate", type=float, default=None, help="at most this many requests per second")
    args = parser.parse_args(argv)
    configure_logging()
    stopped = False

    def on_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        nonlocal stopped
        stopped = True

    try:
        model = args.model or load_section(args.params, "release", ReleaseParams).model
        address = server_address(args.params, url=args.url)
        probe = httpx.get(f"{address.url}/v2/health/live", timeout=5.0)  # fail before loading the data
        if probe.status_code != 200:
            raise ServerUnreachable(address.unreachable(f"/v2/health/live answered {probe.status_code}"))
    except httpx.HTTPError as exc:
        raise SystemExit(f"error: replay: {address.unreachable(type(exc).__name__)}") from None
    except DriftloopError as exc:
        raise SystemExit(f"error: replay: {exc}") from None
    dataset = load_section(args.params, "dataset", Dataset)
    tables = read_source(dataset, load_section(args.params, "data", DataParams))
    rows = replay_rows(tables, dataset, args.months)
    time_column = dataset.time.column
    if args.max_rows and len(rows) > args.max_rows:
        rows = rows.sample(n=args.max_rows, random_state=args.seed).sort_values(time_column).reset_index(drop=True)
    duration = math.inf if args.loop else args.duration
    if args.loop or args.duration:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        result = replay(address.url, model, rows, features=dataset.feature_names, batch=args.batch, log_dir=args.log_dir,
                        api_key=os.environ.get("DRIFTLOOP_API_KEY"), label_every=args.label_every,
                        duration_s=duration, rate=args.rate, stop=lambda: stopped, setting=address.setting)
    except DriftloopError as exc:
        raise SystemExit(f"error: replay: {exc}") from None
    except httpx.HTTPStatusError as exc:
        raise SystemExit(
            f"error: replay: {address.url} answered {exc.response.status_code} to {exc.request.url.path}: "
            f"{exc.response.text[:200]} (is model {model!r} loaded? `driftloop release` installs one)"
        ) from None
    # the drift check's as_of is a local date (snapshot windows are), not the UTC date of the last time
    main_table = tables[dataset.main_table]
    dates = dataset.local_date(main_table)
    last = dates[dates.dt.month.isin(args.months).to_numpy()].max().date()
    log.info("replayed %s; the rows end %s (local date): pass as_of=%s to the drift check", result, last, last)


if __name__ == "__main__":
    main()
