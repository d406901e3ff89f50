"""gunicorn's settings for serving the API (``make run`` uses them, and so can a deployment).

Options on the command line (``--bind``, ``--workers``) override those set here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from gunicorn import util
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.sync import SyncWorker

from loyalty.errors import LoyaltyError, RequestHeadersTooLarge, RequestLineTooLong
from loyalty.logs import LOGGING

wsgi_app = "wsgi:app"
workers = int(os.environ.get("LOYALTY_WORKERS", "4"))
# A worker silent for this long is killed and replaced (a request stuck on a partner that never
# answers cannot hold one: partner and webhook calls time out after seconds, see docs/operations.md).
timeout = 60
# On SIGTERM the workers stop accepting, finish the requests in flight for up to this long, then exit.
graceful_timeout = 30
keepalive = 5
# One JSON line per request is written by the application (loyalty.access, with the request id, the
# route, the key's name); gunicorn's own access line would repeat it without those.
accesslog = None
logconfig_dict = LOGGING

# Prometheus metrics in multiprocess mode: each worker writes its figures to files in this
# directory and a scrape of any worker adds them up (loyalty/api/metrics.py). It is emptied when the
# server starts, so figures of an earlier server are not counted again.
multiproc_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"loyalty-metrics-{os.getpid()}")
)

# Imported here, after the directory is set (prometheus-client chooses its mode when first imported,
# and the workers inherit the master's modules), and not in child_exit: that runs from the master's
# SIGCHLD handling, where an import can interrupt another and fail half-done.
from prometheus_client import multiprocess  # noqa: E402


def on_starting(server: Any) -> None:
    os.makedirs(multiproc_dir, exist_ok=True)
    for name in os.listdir(multiproc_dir):
        if name.endswith(".db"):  # prometheus-client's files, and nothing else a chosen directory holds
            os.remove(os.path.join(multiproc_dir, name))


def child_exit(server: Any, worker: Any) -> None:
    # A dead worker's gauges (its pool) stop counting; its counters and histograms are kept.
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if multiproc_dir.startswith(os.path.join(tempfile.gettempdir(), "loyalty-metrics-")):
        shutil.rmtree(multiproc_dir, ignore_errors=True)

# Request limits, far above the largest legitimate request: a request line (method, path and
# query) is at most a few hundred bytes (ids are at most 64 characters, cursors about 40, the
# longest query, GET /v1/events?types=..., under 300), and the longest header the API reads
# is Idempotency-Key at 200 characters; a proxy in front adds a few of its own (forwarding,
# tracing). Past a limit the client gets a problem+json 414 or 431 (ProblemWorker, below) and
# the application never sees the request.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190


class ProblemWorker(SyncWorker):
    """gunicorn's sync worker, answering a request past the limits with problem+json, as the API
    answers every other refusal, instead of with gunicorn's text/html page."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        error = self.problem(exc)
        if error is None:
            super().handle_error(req, client, addr, exc)
            return
        self.log.warning("Refused a request from %s: %s", (addr or ("",))[0], error.detail)
        body = json.dumps(error.problem()).encode()
        head = (
            f"HTTP/1.1 {error.status} {error.title}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            util.write_nonblock(client, head.encode("ascii") + body)
        except OSError:
            self.log.debug("Failed to send error message.")

    def problem(self, exc: BaseException) -> LoyaltyError | None:
        cfg = self.cfg
        if isinstance(exc, LimitRequestLine):
            return RequestLineTooLong(
                f"the request line (method, path and query) is longer than {cfg.limit_request_line} bytes"
            )
        if isinstance(exc, LimitRequestHeaders):
            fields, size = cfg.limit_request_fields, cfg.limit_request_field_size
            detail = {
                "limit request headers fields": f"the request has more than {fields} headers",
                "limit request headers fields size": f"a header line is longer than {size} bytes",
            }.get(exc.msg, f"the headers are larger than {fields} lines of {size} bytes")
            return RequestHeadersTooLarge(detail)
        return None


worker_class = ProblemWorker
