"""The benchmarks' S3-protocol server: moto's S3, keeping clients' connections open as S3 does.

`moto_server` runs moto on werkzeug's development server, which ends every response with
`Connection: close`: each request a client sends opens a new TCP connection (a connect, an
address lookup and a close, in the API's and the worker's CPU). S3 and MinIO keep a client's
connections open between requests, and the service's S3 client pools them (core.s3_direct).
The benchmarks measure the service's CPU per job, so they serve moto's application from
uvicorn instead (HTTP/1.1 keep-alive; the WSGI application runs in uvicorn's threads). One
thing moto's own request handler does is left out: keeping underscores in header names (S3
metadata keys); the service sends no metadata.

    python -m devtools.s3_server -H 127.0.0.1 -p 5103
"""

from __future__ import annotations

import argparse
import os

import uvicorn
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app


def main(argv: list[str] | None = None) -> None:
    """Serve moto's S3 on the given address until stopped."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server sets it
    app = DomainDispatcherApplication(create_backend_app)
    uvicorn.run(app, host=args.host, port=args.port, interface="wsgi", log_level="warning")


if __name__ == "__main__":
    main()
