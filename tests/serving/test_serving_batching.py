"""Micro-batching: requests merge per version, the queue is bounded, overflow answers at once."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from serving.batcher import MicroBatcher, QueueFull
from serving.repository import ModelRepository
from serving.testing import records_payload, synthetic_rows

MODEL = "flight_delay"


def test_batches_merge_per_version(make_repo):
    repo = ModelRepository(make_repo({"1": "v1", "2": "v2"}))
    v1, v2 = repo.load(MODEL, "1"), repo.load(MODEL, "2")
    frame = synthetic_rows(40, seed=3)
    from driftloop.schema import feeds_for
    from serving.testing import TEST_INPUTS

    feeds = feeds_for(frame, TEST_INPUTS)
    batches: list[tuple[str, int]] = []

    async def main():
        batcher = MicroBatcher(
            max_batch_size=64, max_queue_delay_ms=20, on_batch=lambda mv, n, run_s, cpu_s: batches.append((mv.version, n))
        )
        await batcher.start()
        jobs = []
        for i in range(20):
            mv = v1 if i % 2 == 0 else v2
            part = {k: v[2 * i : 2 * i + 2] for k, v in feeds.items()}
            jobs.append(batcher.submit(mv, part, 2))
        out = await asyncio.gather(*jobs)
        await batcher.stop()
        return out

    results = asyncio.run(main())
    for i, scores in enumerate(results):
        mv = v1 if i % 2 == 0 else v2
        np.testing.assert_array_equal(scores, mv.run({k: v[2 * i : 2 * i + 2] for k, v in feeds.items()}))
    assert sorted(batches) == [("1", 20), ("2", 20)]  # one batch per version, never mixed


def test_queue_bound_unit(make_repo):
    repo = ModelRepository(make_repo({"1": "slow"}))
    mv = repo.load(MODEL, "1")
    from driftloop.schema import feeds_for
    from serving.testing import TEST_INPUTS

    feeds = feeds_for(synthetic_rows(1), TEST_INPUTS)

    async def main():
        batcher = MicroBatcher(max_batch_size=1, max_queue_delay_ms=0, max_queue_rows=3)
        await batcher.start()
        tasks = [asyncio.ensure_future(batcher.submit(mv, feeds, 1)) for _ in range(10)]
        done = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return done

    done = asyncio.run(main())
    full = [d for d in done if isinstance(d, QueueFull)]
    assert full and all(isinstance(d, np.ndarray | QueueFull) for d in done)
    assert sum(isinstance(d, np.ndarray) for d in done) >= 3


@pytest.mark.slow
def test_overflow_answers_429_quickly_and_recovers(make_repo, start_server):
    client = start_server(make_repo({"1": "slow"}), max_batch_size=1, max_queue_delay_ms=0, max_queue_rows=4)
    payload = records_payload(synthetic_rows(1))
    base = str(client.base_url)

    async def burst():
        async with httpx.AsyncClient(
            base_url=base, timeout=30, limits=httpx.Limits(max_connections=64)
        ) as ac:

            async def one():
                t0 = time.perf_counter()
                r = await ac.post(f"/v1/models/{MODEL}:predict", json=payload)
                return r.status_code, r.headers.get("retry-after"), time.perf_counter() - t0

            return await asyncio.gather(*(one() for _ in range(48)))

    results = asyncio.run(burst())
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 429}
    rejected = [(ra, dt) for c, ra, dt in results if c == 429]
    assert rejected, "the burst should overflow a 4-row queue"
    assert all(ra == "1" for ra, _ in rejected)
    assert codes.count(200) >= 4
    # 429s are answered without waiting for inference: well under the time the whole burst takes.
    assert min(dt for _, dt in rejected) < max(dt for c, _, dt in results if c == 200)
    assert client.post(f"/v1/models/{MODEL}:predict", json=payload).status_code == 200
    text = client.get("/metrics").text
    assert 'status="429"' in text


@pytest.mark.slow
def test_concurrent_requests_share_batches(make_repo, start_server):
    client = start_server(make_repo({"1": "slow"}), max_batch_size=64, max_queue_delay_ms=2)
    payload = records_payload(synthetic_rows(1))
    base = str(client.base_url)

    async def burst():
        async with httpx.AsyncClient(base_url=base, timeout=30) as ac:
            return await asyncio.gather(
                *(ac.post(f"/v1/models/{MODEL}:predict", json=payload) for _ in range(32))
            )

    assert all(r.status_code == 200 for r in asyncio.run(burst()))
    text = client.get("/metrics").text
    count = next(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("driftloop_batch_rows_count")
    )
    assert count < 32  # fewer session.run calls than requests


def test_full_batch_on_an_idle_batcher_runs_inline(make_repo, monkeypatch):
    """A request of at least `max_batch_size` rows, with nothing queued or running, runs on the
    calling thread once its version's measured speed says it is short; else on the thread."""
    import threading

    import serving.batcher as batcher_module

    repo = ModelRepository(make_repo({"1": "v1"}))
    mv = repo.load(MODEL, "1")
    from driftloop.schema import feeds_for
    from serving.testing import TEST_INPUTS

    feeds = feeds_for(synthetic_rows(8, seed=4), TEST_INPUTS)
    threads: list[str] = []
    timed_run = batcher_module._timed_run

    def recording_run(version, f):
        threads.append(threading.current_thread().name)
        return timed_run(version, f)

    monkeypatch.setattr(batcher_module, "_timed_run", recording_run)

    async def main(inline_max_ms: float):
        batches: list[int] = []
        batcher = MicroBatcher(max_batch_size=8, max_queue_delay_ms=0, inline_max_ms=inline_max_ms,
                               on_batch=lambda v, n, run_s, cpu_s: batches.append(n))  # fmt: skip
        await batcher.start()
        timing: dict[str, float] = {}
        out = [await batcher.submit(mv, feeds, 8, timing) for _ in range(3)]
        small = await batcher.submit(mv, {k: v[:2] for k, v in feeds.items()}, 2)  # not a full batch
        await batcher.stop()
        return out, small, batches, timing

    out, small, batches, timing = asyncio.run(main(inline_max_ms=1000.0))
    main_thread = threading.main_thread().name
    # The first run measures the version on the inference thread; the next full batches run inline.
    assert threads[0] != main_thread and threads[1:3] == [main_thread] * 2 and threads[3] != main_thread
    assert batches == [8, 8, 8, 2] and timing["queue_s"] == 0.0 and timing["run_s"] > 0
    for scores in out:
        np.testing.assert_array_equal(scores, mv.run(feeds))
    np.testing.assert_array_equal(small, mv.run({k: v[:2] for k, v in feeds.items()}))
    threads.clear()
    asyncio.run(main(inline_max_ms=0.0))  # a version too slow for the bound never runs inline
    assert main_thread not in threads
