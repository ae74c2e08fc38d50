"""A TCP forwarder that a test can cut and restore: a server that is gone (nothing
listens, every connection through it is dropped) and then back on the same port; or
whose replies are lost on the way while its requests still arrive (a commit that
lands without its client hearing of it). The server behind it is real; only what
reaches whom is the test's to decide."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from app.embedded_stack import free_port


def _pump(source: socket.socket, sink: socket.socket, passes: Callable[[bytes], bool]) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            if passes(data):
                sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class TcpProxy:
    def __init__(
        self, upstream: tuple[str, int], *, listening: bool = True, host: str = "127.0.0.1"
    ) -> None:
        self.host, self.port = host, free_port()
        self._upstream = upstream
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._sockets: list[socket.socket] = []
        self._dropping_replies = threading.Event()
        self._drop_replies_after: bytes | None = None
        self._cut_after_s: float | None = None
        self.replies_dropped = 0  # chunks of server data lost so far
        if listening:
            self.restore()

    def restore(self) -> None:
        """Listen again (or for the first time) and forward new connections."""
        with self._lock:
            if self._stop is not None:
                return
            listener = socket.create_server((self.host, self.port))
            listener.settimeout(0.1)  # so that a cut is noticed without a wake-up trick
            self._stop = threading.Event()
            self._sockets.append(listener)
        threading.Thread(target=self._serve, args=(listener, self._stop), daemon=True).start()

    def restore_after(self, delay_s: float) -> None:
        threading.Timer(delay_s, self.restore).start()

    def drop_replies(self, after: bytes | None = None, cut_after_s: float | None = None) -> None:
        """From now (or from the first request containing `after`) until the next cut,
        what the server sends is lost on the way: requests still reach it and are
        carried out, and their client never hears back. With `cut_after_s`, the proxy
        cuts every connection that long after it starts dropping, then listens again."""
        self._cut_after_s = cut_after_s
        if after is None:
            self._start_dropping()
        else:
            self._drop_replies_after = after

    def _start_dropping(self) -> None:
        if self._dropping_replies.is_set():
            return
        self._dropping_replies.set()
        if self._cut_after_s is not None:
            threading.Timer(self._cut_after_s, self._cut_and_restore).start()

    def _cut_and_restore(self) -> None:
        self.cut()
        self.restore()

    def _request(self, data: bytes) -> bool:
        marker = self._drop_replies_after
        if marker is not None and marker in data:
            self._start_dropping()
        return True  # a request always reaches the server

    def _reply(self, data: bytes) -> bool:
        if self._dropping_replies.is_set():
            self.replies_dropped += 1
            return False
        return True

    def cut(self) -> None:
        """Stop listening and drop every connection made through the proxy."""
        with self._lock:
            if self._stop is not None:
                self._stop.set()
            self._stop = None
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self._dropping_replies.clear()  # the connections that lost replies are gone
        self._drop_replies_after = None
        self._cut_after_s = None

    close = cut

    def _serve(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if stop.is_set():  # cut while this connection was being made
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink, passes in (
                (client, upstream, self._request),
                (upstream, client, self._reply),
            ):
                threading.Thread(target=_pump, args=(source, sink, passes), daemon=True).start()
