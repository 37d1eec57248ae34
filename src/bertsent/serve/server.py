"""Running the app: ``bertsent serve`` (:func:`cmd_serve`), the socket, uvicorn, signals, the start banner.

Light to import (the CLI imports :func:`cmd_serve` at start-up): FastAPI, uvicorn and the model are
imported when a server starts. :func:`background_server` runs an app in a thread (tests, benchmarks).
Shutdown (SIGTERM, Ctrl-C): uvicorn stops accepting connections and waits up to ``graceful_timeout``
for the requests already accepted; the worker runs what is still queued before the app stops.
"""

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping

from bertsent.config import DEFAULT_HOST, InferenceSettings, ServeSettings
from bertsent.errors import ServeError, SettingsError
from bertsent.serve.middleware import API_KEY_ENV

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), or a one-line ``ServeError``.

    Binding here, before uvicorn starts, turns "address in use" into a clear error and tells the real
    port when 0 was asked.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve host {host!r}: {e.strerror}") from e
    sock = socket.socket(family, kind, proto)
    # Lets a restarted server take its port back at once (TIME_WAIT); two listeners still conflict.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_config(app, log_level: str, **kwargs):
    """uvicorn's config for ``app``: graceful shutdown waits ``graceful_timeout`` for accepted requests."""
    import uvicorn

    settings = getattr(app.state, "settings", None) or ServeSettings()
    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=settings.graceful_timeout, **kwargs)


@contextlib.contextmanager
def background_server(app, host: str = DEFAULT_HOST, port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yields its base URL, stops it on exit."""
    import uvicorn

    sock = bind_socket(host, port)
    server = uvicorn.Server(_uvicorn_config(app, "warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="bertsent-serve")
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the server did not start within {timeout:g} s (see the log)")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def settings_from_args(ns: argparse.Namespace) -> ServeSettings:
    """The server's settings from ``bertsent serve``'s flags."""
    from bertsent.argparsing import settings

    return settings(ns, ServeSettings)


def api_key_from_env(settings: ServeSettings, environ: Mapping[str, str] = os.environ) -> ServeSettings:
    """``settings`` with the API key of ``$BERTSENT_API_KEY`` when ``--api-key`` was not given."""
    if settings.api_key is not None or API_KEY_ENV not in environ:
        return settings
    if not environ[API_KEY_ENV]:
        raise SettingsError(f"${API_KEY_ENV} is set but empty: unset it, or set it to the key")
    try:
        return dataclasses.replace(settings, api_key=environ[API_KEY_ENV])
    except SettingsError as e:
        raise SettingsError(f"${API_KEY_ENV}: {e}") from None


class _Terminated(Exception):
    """SIGTERM, re-raised by uvicorn once it has shut down gracefully: a normal stop, like Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def run_until_stopped(app, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGINT (Ctrl-C) or SIGTERM; either stops it gracefully, and returns.

    uvicorn catches both signals itself: it stops accepting connections, answers the requests already
    accepted (up to ``graceful_timeout`` s), runs the lifespan's shutdown (the batcher finishes what is
    queued) and then re-raises the signal, which ends here instead of killing the process.
    """
    import uvicorn

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        with contextlib.suppress(KeyboardInterrupt, _Terminated):
            uvicorn.Server(_uvicorn_config(app, "info")).run(sockets=[sock])
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def cmd_serve(ns: argparse.Namespace) -> int:
    """``bertsent serve``: load the folder, bind, serve until Ctrl-C or SIGTERM, then print what was served."""
    from bertsent.argparsing import settings as from_flags
    from bertsent.serve.app import create_app

    flags = settings_from_args(ns)
    settings = api_key_from_env(flags)
    inference = from_flags(ns, InferenceSettings)
    sock = bind_socket(settings.host, settings.port)  # before loading: a busy port fails fast
    try:
        app = create_app(ns.model, settings, inference)
        print_banner(app, url_of(sock), key_from_env=flags.api_key is None and settings.api_key is not None)
        run_until_stopped(app, sock)
    finally:
        sock.close()
    s = app.state.batcher.stats
    print(f"served {s.requests} requests ({s.texts} texts) in {s.batches} batches; {s.errors} failed batches")
    return 0


def print_banner(app, url: str, key_from_env: bool = False) -> None:
    """What ``bertsent serve`` prints once bound (never the API key itself)."""
    from bertsent.serve.schemas import BODY_EXAMPLE

    model, settings = app.state.description, app.state.settings
    labels = ", ".join(model.labels[i] for i in sorted(model.labels))
    print(f"serving {model.model_dir} ({model.backend}; labels: {labels}) at {url}")
    print(
        f"runs in {model.precision} on {model.threads} threads, {model.max_length} tokens per text "
        f"({model.truncation} kept; long texts: {model.long_text})"
    )
    print(f"web page: {url}/   API docs: {url}/docs   metrics: {url}/metrics")
    print(f"predict: POST {url}/predict {BODY_EXAMPLE}")
    print(
        f"micro-batching: up to {settings.max_batch_size} texts, waiting at most {settings.max_wait_ms:g} ms, "
        f"{settings.max_batch_tokens:,} padded tokens per batch; limits: {settings.max_inputs} texts, "
        f"{settings.max_chars:,} characters, {settings.max_body_bytes:,} bytes per request, "
        f"{settings.max_concurrent_requests:,} requests at once (more: 429)"
    )
    if settings.api_key is not None:
        source = f"${API_KEY_ENV}" if key_from_env else "--api-key"
        print(f"API key: required on /predict, /info and /metrics (Authorization: Bearer KEY; the key from {source})")
    elif settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s without an API key: anyone who can reach it can use the API (--api-key or $%s)",
            settings.host,
            API_KEY_ENV,
        )
