"""`driftloop serve`: run the model server (uvicorn, one worker) over a model repository."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from driftloop.errors import DriftloopError

log = logging.getLogger(__name__)


def serve(
    repository: Annotated[
        Path, typer.Option(help="model repository: <repository>/<model>/<version>/")
    ] = Path("model_repository"),
    host: Annotated[
        str, typer.Option(help="bind address; keep loopback unless a proxy fronts it")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    model: Annotated[
        list[str] | None, typer.Option(help="model to load at start (repeatable); default all")
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option(help="rows per session.run; 1 disables micro-batching")
    ] = 256,
    max_queue_delay_ms: Annotated[float, typer.Option(help="how long a batch waits to fill, ms")] = 0.0,
    max_queue_rows: Annotated[int, typer.Option(help="queued rows before 429 + Retry-After")] = 8192,
    intra_op_threads: Annotated[
        int, typer.Option(help="ONNX Runtime intra-op threads (0 = ORT default)")
    ] = 1,
    max_body_bytes: Annotated[int, typer.Option(help="request body limit in bytes (413 past it)")] = 1 << 20,
    max_rows: Annotated[int, typer.Option(help="rows per request (413 past it)")] = 10_000,
    max_string_length: Annotated[int, typer.Option(help="characters per string value")] = 64,
    log_dir: Annotated[Path | None, typer.Option(help="prediction log folder; default: no log")] = None,
    flush_interval_s: Annotated[float, typer.Option(help="prediction log flush interval, s")] = 2.0,
    max_rows_per_file: Annotated[int, typer.Option(help="prediction log rows per file")] = 100_000,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain): serve HTTPS (uvicorn's --ssl-certfile)")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option(help="PEM private key of --ssl-certfile (uvicorn's --ssl-keyfile)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="logging level")] = "info",
) -> None:
    """Serve ONNX models over the Open Inference Protocol v2 (plus a records endpoint).

    Set DRIFTLOOP_API_KEY to require an API key (header x-api-key or Authorization: Bearer) on
    every endpoint but /v2/health/*: it is the admin key (scoring, load, unload, traffic; the
    release plane sends it). DRIFTLOOP_SCORE_API_KEY adds a second key that may score and read
    metadata and /metrics, and gets 403 on /v2/repository/*. --ssl-certfile/--ssl-keyfile serve
    HTTPS. Request bodies must be application/json (or application/octet-stream with the binary
    tensor extension; tritonclient's missing Content-Type is accepted). SIGTERM drains in-flight
    requests and flushes the prediction log before exit.

    Example:

        driftloop serve --repository model_repository --port 8080 --log-dir logs/predictions

        curl -s localhost:8080/v1/models/flight-delay:predict -H 'content-type: application/json' \
        -d '{"instances": [{"<input>": <value>, ...}]}'   # the inputs of the package's signature.json
    """
    import uvicorn

    from serving.app import create_app
    from serving.config import ServeSettings, api_key_from_env, score_api_key_from_env

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if repository.exists() and not repository.is_dir():
            raise DriftloopError(f"{repository}: not a folder; --repository takes the model repository folder")
        if not repository.exists():  # a first start, before any release installed a version
            repository.mkdir(parents=True)
            logging.getLogger(__name__).info("created an empty model repository at %s", repository)
        settings = ServeSettings(
            repository=repository,
            models=list(model or []),
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            max_queue_rows=max_queue_rows,
            intra_op_threads=intra_op_threads,
            max_body_bytes=max_body_bytes,
            max_rows=max_rows,
            max_string_length=max_string_length,
            log_dir=log_dir,
            flush_interval_s=flush_interval_s,
            max_rows_per_file=max_rows_per_file,
            api_key=api_key_from_env(),
            score_api_key=score_api_key_from_env(),
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
    except (DriftloopError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="auto",
        http="auto",
        access_log=False,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=30,
        ssl_certfile=None if settings.ssl_certfile is None else str(settings.ssl_certfile),
        ssl_keyfile=None if settings.ssl_keyfile is None else str(settings.ssl_keyfile),
    )


def main() -> None:  # pragma: no cover - `python -m serving.cli`
    """Entry point without the rest of the `driftloop` CLI."""
    typer.run(serve)


if __name__ == "__main__":  # pragma: no cover
    main()
