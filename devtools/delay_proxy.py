"""A TCP proxy that delays every byte by a fixed time each way: a distant server, on loopback.

The benchmarks use it to put PostgreSQL "a few milliseconds away" on one machine, where the
kernel's traffic shaping (tc netem) is not available. The fault tests put it, with no delay,
between the service and PostgreSQL and kill it: every connection through it is cut and new
ones are refused, a network partition or a failover, while the shared server keeps running.

Each connection gets two threads a direction: one reads what arrives and stamps it with the
time it may leave, the other sends it at that time, in order (time.sleep is precise to tens
of microseconds, where an event loop's timers round to whole milliseconds). The round trip a
client sees is about twice --delay-ms plus the proxy's own forwarding: measure it
(bench.commits does) rather than assume it.

    python -m devtools.delay_proxy --listen-port 6543 --target 127.0.0.1:5432 --delay-ms 0.5
"""

from __future__ import annotations

import argparse
import queue
import socket
import threading
import time

CHUNK = 65536
Inbox = queue.SimpleQueue[tuple[float, bytes] | None]  # (when it may leave, the bytes); None: EOF


def _reader(source: socket.socket, out: Inbox, delay_s: float) -> None:
    try:
        while data := source.recv(CHUNK):
            out.put((time.monotonic() + delay_s, data))
    except OSError:
        pass
    out.put(None)


def _writer(inbox: Inbox, target: socket.socket) -> None:
    try:
        while (item := inbox.get()) is not None:
            due, data = item
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _pipe(source: socket.socket, target: socket.socket, delay_s: float) -> list[threading.Thread]:
    """Forward source -> target, each chunk delay_s after it arrived."""
    inbox: Inbox = queue.SimpleQueue()
    return [
        threading.Thread(target=_reader, args=(source, inbox, delay_s), daemon=True),
        threading.Thread(target=_writer, args=(inbox, target), daemon=True),
    ]


def _serve_connection(client: socket.socket, target: tuple[str, int], delay_s: float) -> None:
    try:
        server = socket.create_connection(target)
    except OSError:  # the target is down: the client sees its connection closed
        client.close()
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threads = _pipe(client, server, delay_s) + _pipe(server, client, delay_s)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    server.close()


def serve(listen_port: int, target: tuple[str, int], delay_s: float) -> None:
    """Accept on 127.0.0.1:listen_port forever, each connection forwarded to target."""
    listener = socket.create_server(("127.0.0.1", listen_port), backlog=128)
    print(  # noqa: T201 - what a harness waits for
        f"proxy 127.0.0.1:{listen_port} -> {target[0]}:{target[1]}, {1000 * delay_s:g} ms each way",
        flush=True,
    )
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=_serve_connection, args=(client, target, delay_s), daemon=True
        ).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--delay-ms", type=float, required=True, help="added each way")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    serve(args.listen_port, (host, int(port)), args.delay_ms / 1000)


if __name__ == "__main__":
    main()
