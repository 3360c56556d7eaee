"""A TCP proxy in front of the real PostgreSQL server, to make the database go away and return.

Stopping it closes the listening socket and every open connection, which is what
the tracker sees when the database server restarts or the network drops.
:meth:`TcpProxy.lose_reply` loses one reply: the server got the request and did
it (committed), the client sees its connection cut with no answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target`` until stopped; can be started again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._stop_after_loss = False
        self.replies_lost = 0
        self.reply_lost = threading.Event()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def lose_reply(self, marker: bytes, *, then_stop: bool = False) -> None:
        """Lose the server's reply to the next request whose bytes contain ``marker``.

        The request reaches the server, which does it (a single statement commits
        before its reply is sent); once the reply comes back, it is dropped and the
        connection cut, as a network that fails at that moment does. With
        ``then_stop`` the proxy stops too (the database away until :meth:`start`).
        :attr:`reply_lost` is set once it happened; :attr:`replies_lost` counts.
        """
        with self._lock:
            self._marker = marker
            self._stop_after_loss = then_stop
            self.reply_lost.clear()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in [listener, *sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                # Stopped while this connection was being made: it must not outlive
                # the stop (the database is away for every connection).
                stopped = self._listener is not listener
                if not stopped:
                    self._sockets += [client, upstream]
            if stopped:
                client.close()
                upstream.close()
                return
            link = _Link(client, upstream)
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()
            threading.Thread(target=self._replies, args=(link,), daemon=True).start()

    def _requests(self, link: _Link) -> None:
        tail = b""  # the end of the previous chunk: a marker may straddle two
        try:
            while chunk := link.client.recv(65536):
                marker = self._marker
                if marker is not None and marker in tail + chunk:
                    with self._lock:
                        if self._marker is not None:
                            self._marker = None
                            link.doomed = True
                if marker is not None:
                    tail = chunk[-(len(marker) - 1) :] if len(marker) > 1 else b""
                link.upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            link.cut()

    def _replies(self, link: _Link) -> None:
        try:
            while chunk := link.upstream.recv(65536):
                if link.doomed:
                    # Counted before the cut: the client reconnects the moment it
                    # sees it, and a test may read the count as soon as it has.
                    with self._lock:
                        self.replies_lost += 1
                        then_stop = self._stop_after_loss
                    link.cut()
                    if then_stop:
                        self.stop()
                    self.reply_lost.set()
                    return
                link.client.sendall(chunk)
        except OSError:
            pass
        finally:
            link.cut()


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.doomed = False  # the server's next reply is lost

    def cut(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
