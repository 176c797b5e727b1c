"""A small HTTP server for processes without the API: /metrics and health probes.

Workers, the sweeper and the webhook worker each run one on their own port, in a daemon
thread, with the standard library only (workers do not install FastAPI).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

from core import metrics
from core.config import Settings

log = logging.getLogger("core.probe_server")
# A probe answers (HTTP status, JSON body): 200 when healthy, 503 otherwise.
Probe = Callable[[], tuple[int, dict[str, Any]]]


def always_alive() -> tuple[int, dict[str, Any]]:
    """The probe of a process that is healthy whenever it can answer."""
    return 200, {"status": "ok"}


class ProbeServer:
    """Serves GET /metrics and one JSON endpoint per probe (/livez, /readyz, ...)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        probes: dict[str, Probe],
        registries: tuple[CollectorRegistry, ...] = (),
    ) -> None:
        self.probes = probes
        self.registries = registries
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="probe-server", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on (useful when started on port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        """Start answering in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = metrics.render(*server.registries)
                    self._answer(200, body, metrics.CONTENT_TYPE_LATEST)
                    return
                probe = server.probes.get(path)
                if probe is None:
                    self._answer(404, b'{"status": "not_found"}', "application/json")
                    return
                try:
                    status, payload = probe()
                except Exception as exc:  # noqa: BLE001 - a failing probe is an unhealthy one
                    status, payload = 503, {"status": "error", "error": type(exc).__name__}
                self._answer(status, json.dumps(payload).encode(), "application/json")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # probes arrive every few seconds; they are not worth a log line

        return Handler


def start_probe_server(
    *,
    host: str,
    port: int,
    probes: dict[str, Probe],
    registries: tuple[CollectorRegistry, ...] = (),
) -> ProbeServer | None:
    """Start a probe server, or log why not (port 0 disables it; a busy port is an error)."""
    if port <= 0:
        return None
    try:
        server = ProbeServer(host=host, port=port, probes=probes, registries=registries)
    except OSError as exc:
        log.error("cannot serve probes and metrics on %s:%d: %s", host, port, exc)
        return None
    log.info("probes and metrics on http://%s:%d/metrics", host, port)
    return server.start()


def serve_process_probes(settings: Settings, *, role: str, port: int) -> None:
    """Count this process's job events and serve /metrics and /healthz on its probe port."""
    from core.job_telemetry import install_job_telemetry

    install_job_telemetry()
    metrics.BUILD_INFO.labels(role).set(1)
    start_probe_server(
        host=settings.probe_host,
        port=port,
        probes={"/healthz": always_alive, "/livez": always_alive, "/readyz": always_alive},
    )
