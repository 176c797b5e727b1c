"""Hostile HTTP peers on real sockets: servers that drip their answer a byte at a time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

HEADERS_200 = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\n"


def _serve(listener: socket.socket, answer: bytes, drip: bytes, every_s: float) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_drip, args=(conn, answer, drip, every_s), daemon=True).start()


def _drip(conn: socket.socket, answer: bytes, drip: bytes, every_s: float) -> None:
    """Send `answer` at once, then one byte of `drip` (cycled) every `every_s`, until closed."""
    try:
        conn.settimeout(1.0)
        try:
            conn.recv(65536)  # the request (its headers at least)
        except OSError:
            pass
        conn.sendall(answer)
        position = 0
        while True:
            time.sleep(every_s)
            conn.sendall(drip[position % len(drip) : position % len(drip) + 1])
            position += 1
    except OSError:
        pass
    finally:
        conn.close()


@contextmanager
def drip_server(answer: bytes, drip: bytes, *, every_s: float = 0.1) -> Iterator[str]:
    """http://127.0.0.1:PORT of a server that answers every connection with `answer`, then
    drips `drip` byte by byte for ever (never finishing headers or body)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    threading.Thread(target=_serve, args=(listener, answer, drip, every_s), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def dripping_headers(*, every_s: float = 0.1) -> AbstractContextManager[str]:
    """A server whose header block never ends: one header byte at a time."""
    return drip_server(HEADERS_200 + b"x-drip: ", b"a", every_s=every_s)


def dripping_body(status: int = 200, *, every_s: float = 0.1) -> AbstractContextManager[str]:
    """A server that answers `status` with a body of 1 MB sent one byte at a time."""
    head = f"HTTP/1.1 {status} OK\r\ncontent-length: 1048576\r\n\r\n".encode()
    return drip_server(head, b"x", every_s=every_s)
