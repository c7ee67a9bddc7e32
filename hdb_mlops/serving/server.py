"""Running the service with uvicorn: in a background thread (notebooks, tests) or as the
process that ``hdb-mlops serve`` starts.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from hdb_mlops.serving.app import (
    BODY_TIMEOUT_ENV,
    DEFAULT_MAX_BATCH,
    MAX_BATCH_ENV,
    body_timeout_from_env,
    create_app,
    fast_path_from_env,
)
from hdb_mlops.serving.loading import MODEL_ENV, MODEL_NAME_ENV, ModelLoadError, resolve_model_ref
from hdb_mlops.serving.logs import logging_config

log = logging.getLogger(__name__)


GRACEFUL_SHUTDOWN_S = 20
#: The app factory workers call when there are several (the bare service).
DEFAULT_FACTORY = "hdb_mlops.serving.app:app_from_env"
WORKER_HEALTHCHECK_S = 120


@contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 120.0
) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (a notebook or a test); yields its
    base URL (``port=0``: a free port) once the model is loaded, and stops the server on
    exit. Raises :class:`ModelLoadError` when the app fails to start."""
    import threading

    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)

    def run() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits this way when start-up fails
            server.run()

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            error = getattr(app.state, "startup_error", None)
            raise error or ModelLoadError(f"the server did not start within {timeout:g} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    model_ref: str | Path | int | None = None,
    log_level: str = "info",
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    graceful_timeout: int = GRACEFUL_SHUTDOWN_S,
    body_timeout: float | None = None,
    app_factory: Callable[..., FastAPI] = create_app,
    app_options: Mapping[str, Any] | None = None,
    factory: str = DEFAULT_FACTORY,
    worker_env: Mapping[str, str] | None = None,
) -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM (what ``hdb-mlops serve`` calls).

    One worker serves an app made here (a bad model reference raises
    :class:`ModelLoadError` before anything listens; a bundle that fails verification stops
    start-up with exit status 3). With ``workers > 1`` each worker builds its app from
    ``hdb_mlops.serving.app:app_from_env`` (the reference is passed in ``$HDB_MLOPS_MODEL``, after
    a check here). ``$HDB_MLOPS_FAST_PATH=0`` serves through the generic loader path. Logs are
    JSON lines on stderr; in-flight requests get ``graceful_timeout`` seconds on shutdown.
    A request body must arrive within ``body_timeout`` seconds (default
    ``$HDB_MLOPS_BODY_TIMEOUT``, else 10 s), else 408 and the connection is closed: uvicorn
    has no such bound (``timeout_keep_alive`` only covers idle connections between requests).

    ``app_factory`` builds the one worker's app (default :func:`create_app`; ``hdb-mlops
    serve`` passes :func:`hdb_mlops.monitoring.service.create_monitored_app`) with
    ``app_options`` on top of the serving options; with several workers ``factory`` is the
    ``module:function`` each worker calls, and ``worker_env`` is set in the environment
    they inherit (how the options reach them).
    """
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if body_timeout is None:
        body_timeout = body_timeout_from_env()
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": logging_config(log_level),
        "log_level": log_level.lower(),
        "access_log": False,
        "timeout_graceful_shutdown": graceful_timeout,
        "server_header": False,
    }
    if workers == 1:
        logging.config.dictConfig(options["log_config"])
        app = app_factory(
            model_ref,
            max_batch=max_batch,
            fast_path=fast_path_from_env(),
            body_timeout=body_timeout,
            tune_process=True,
            **(app_options or {}),
        )
        uvicorn.run(app, **options)
        return
    source = resolve_model_ref(model_ref)  # fail here, not in every worker
    os.environ[MODEL_ENV] = str(source.path) if source.path else str(source.version)
    if source.registry_name:
        os.environ[MODEL_NAME_ENV] = source.registry_name
    os.environ[MAX_BATCH_ENV] = str(max_batch)
    os.environ[BODY_TIMEOUT_ENV] = repr(float(body_timeout))
    os.environ.update(worker_env or {})
    uvicorn.run(
        factory,
        factory=True,
        workers=workers,
        # a worker importing the stack and loading a model holds the GIL for seconds on a
        # busy machine: do not let the supervisor kill it for missing a 5 s health ping
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        **options,
    )
