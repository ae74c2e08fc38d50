"""A network link that a test can cut as a partition does (packets vanish, no reset),
built only from network namespaces of our own: every address it adds lives inside
them, none in this (the root) namespace.

    client namespace                relay namespace               root namespace
    [process] --veth--> socat TCP-LISTEN ~> unix socket in a temp folder ~> socat -> 127.0.0.1:PORT

The veth pair joins the client's namespace to a relay namespace; a socat there listens
on its end's address and relays each connection to a unix socket (the file system is
shared across network namespaces), where a socat in the root namespace accepts and
connects to the server on loopback. Cutting takes the relay's veth end down.
Needs root, iproute2 and socat."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

# Inside our namespaces only, so a fixed pair cannot clash with the host's addresses.
RELAY_ADDRESS, CLIENT_ADDRESS = "10.200.0.1", "10.200.0.2"


def netns_available() -> bool:
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in ("ip", "socat"))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class NetnsLink:
    def __init__(self, folder: Path) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.client, self.relay = f"cao-{suffix}-c", f"cao-{suffix}-r"
        self._client_end, self._relay_end = f"cao{suffix}c", f"cao{suffix}r"
        self._folder = folder
        self._processes: list[subprocess.Popen[bytes]] = []
        self._relayed: set[int] = set()

    def build(self) -> None:
        for namespace in (self.client, self.relay):
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        # Created inside the client's namespace, its peer moved straight to the relay's:
        # neither end ever exists in the root namespace.
        _ip(
            "-n", self.client, "link", "add", self._client_end, "type", "veth",
            "peer", "name", self._relay_end, "netns", self.relay,
        )  # fmt: skip
        for namespace, end, address in (
            (self.client, self._client_end, CLIENT_ADDRESS),
            (self.relay, self._relay_end, RELAY_ADDRESS),
        ):
            _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", end)
            _ip("-n", namespace, "link", "set", end, "up")

    def relay_to(self, port: int) -> tuple[str, int]:
        """Relays RELAY_ADDRESS:port (as seen from the client's namespace) to the root
        namespace's 127.0.0.1:port; returns that address."""
        if port in self._relayed:
            return RELAY_ADDRESS, port
        self._relayed.add(port)
        socket_path = self._folder / f"{port}.sock"
        self._socat(
            f"root-{port}", None, f"UNIX-LISTEN:{socket_path},fork", f"TCP:127.0.0.1:{port},nodelay"
        )
        self._socat(
            f"relay-{port}",
            self.relay,
            f"TCP-LISTEN:{port},bind={RELAY_ADDRESS},fork,reuseaddr,nodelay",
            f"UNIX-CONNECT:{socket_path}",
        )
        return RELAY_ADDRESS, port

    def on_loopback(self, port: int) -> None:
        """The server at 127.0.0.1:port in the root namespace is at the same address in
        the client's, through the link: processes there use their usual settings."""
        address, _ = self.relay_to(port)
        self._socat(
            f"client-{port}",
            self.client,
            f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay",
            f"TCP:{address}:{port},nodelay",
        )

    def in_client(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.client, *command]

    def cut(self) -> None:
        _ip("-n", self.relay, "link", "set", self._relay_end, "down")

    def restore(self) -> None:
        _ip("-n", self.relay, "link", "set", self._relay_end, "up")

    def _socat(self, name: str, namespace: str | None, *addresses: str) -> None:
        log = self._folder / f"{name}.log"
        command = ["socat", "-d", "-d", *addresses]
        if namespace is not None:
            command = ["ip", "netns", "exec", namespace, *command]
        with log.open("wb") as out:
            # A session of its own: its forked children are stopped with it.
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True
            )
        self._processes.append(process)
        deadline = time.monotonic() + 10
        while b"listening on" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat {name} did not listen: {log.read_text()}")
            time.sleep(0.01)

    def tear_down(self) -> None:
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()
        # Deleting a namespace deletes the veth end in it, and with it its peer.
        for namespace in (self.client, self.relay):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@contextlib.contextmanager
def netns_link() -> Iterator[NetnsLink]:
    with tempfile.TemporaryDirectory(prefix="cao-netns-") as folder:
        link = NetnsLink(Path(folder))
        try:
            link.build()
            yield link
        finally:
            link.tear_down()
