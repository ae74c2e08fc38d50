"""A plain TCP forwarder, run inside a network namespace so that a process there finds
the run's servers at their usual loopback addresses:

    python -m benchmarks.chaos.forward LISTEN_PORT:UPSTREAM_HOST:UPSTREAM_PORT ...
"""

from __future__ import annotations

import socket
import sys
import threading

from tests.e2e.tcp_proxy import _pump


def _serve(port: int, upstream: tuple[str, int]) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        client, _ = listener.accept()
        try:
            server = socket.create_connection(upstream, timeout=5)
        except OSError:
            client.close()
            continue
        server.settimeout(None)
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=_pump, args=(source, sink, bool), daemon=True).start()


def main(routes: list[str]) -> None:
    threads = []
    for route in routes:
        port, host, upstream_port = route.split(":")
        thread = threading.Thread(target=_serve, args=(int(port), (host, int(upstream_port))))
        thread.start()
        threads.append(thread)
    print("forwarding", flush=True)
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
