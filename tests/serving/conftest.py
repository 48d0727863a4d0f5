"""Fixtures of the serving tests: test packages built with onnx.helper, and real uvicorn servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from serving.app import create_app
from serving.config import ServeSettings
from serving.testing import FEATURES, build_test_package, running_server, synthetic_rows

MODEL = "flight_delay"


@pytest.fixture(scope="session")
def package_store(tmp_path_factory) -> Path:
    """Built once: v1 (weight 1.0), v2 (weight 1.5), an inverted and a slow package."""
    root = tmp_path_factory.mktemp("packages")
    build_test_package(root / "v1", model_name=MODEL, version_weight=1.0)
    build_test_package(root / "v2", model_name=MODEL, version_weight=1.5)
    build_test_package(root / "inverted", model_name=MODEL, version_weight=1.0, inverted=True)
    build_test_package(
        root / "slow", model_name=MODEL, version_weight=1.0, slow=True, slow_layers=24, slow_width=1024
    )
    return root


def copy_package(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.fixture
def make_repo(tmp_path, package_store) -> Callable[..., Path]:
    """make_repo({"1": "v1", "2": "v2"}) -> a fresh repository root under tmp_path."""

    def make(layout: dict[str, str] | None = None, name: str = "repo") -> Path:
        root = tmp_path / name
        for version, kind in (layout or {"1": "v1"}).items():
            copy_package(package_store / kind, root / MODEL / version)
        return root

    return make


@pytest.fixture
def start_server(tmp_path) -> Iterator[Callable[..., httpx.Client]]:
    """start_server(repo, **settings) -> an httpx.Client on a live server; all stopped at teardown."""
    stack = []

    def start(repository: Path, **overrides) -> httpx.Client:
        settings = ServeSettings(repository=repository, **overrides)
        app = create_app(settings)
        ctx = running_server(app, ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile)
        base = ctx.__enter__()
        verify = str(settings.ssl_certfile) if settings.ssl_certfile else True
        client = httpx.Client(base_url=base, timeout=30, verify=verify)
        client.app = app  # type: ignore[attr-defined]
        stack.append((ctx, client))
        return client

    start.stop = lambda: _stop(stack)  # type: ignore[attr-defined]
    yield start
    _stop(stack)


def _stop(stack) -> None:
    while stack:
        ctx, client = stack.pop()
        client.close()
        ctx.__exit__(None, None, None)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Iterator[httpx.Client]:
    """One server (v1 loaded) for the read-only tests of a module."""
    root = tmp_path_factory.mktemp("shared_repo")
    build_test_package(root / MODEL / "1", model_name=MODEL, version_weight=1.0)
    app = create_app(
        ServeSettings(repository=root, max_rows=500, max_body_bytes=256 * 1024, max_string_length=16)
    )
    with running_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        client.package = root / MODEL / "1"  # type: ignore[attr-defined]
        yield client


@pytest.fixture(scope="session")
def rows() -> pd.DataFrame:
    """20 realistic rows with some NaN weather values."""
    frame = synthetic_rows(20, seed=7, null_fraction=0.2)
    assert frame[list(FEATURES)].isna().any().any()
    return frame
