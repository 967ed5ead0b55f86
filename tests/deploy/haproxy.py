"""deploy/haproxy.cfg run in the foreground for a test, with a stats socket to read its view of the servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.conftest import ROOT
from tests.helpers import stop_process, wait_until

CONFIG = ROOT / "deploy" / "haproxy.cfg"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.path.exists(p)), None)


class HAProxy:
    def __init__(self, folder: Path, listen: str, servers: list[str], prefix: list[str] = ()):
        self.folder = folder
        self.listen = listen
        self.servers = servers
        self.prefix = list(prefix)  # e.g. ["ip", "netns", "exec", "lb"]
        self.stats = folder / "haproxy.sock"
        self.process: subprocess.Popen | None = None

    def start(self) -> "HAProxy":
        extra = self.folder / "stats.cfg"
        extra.write_text(f"global\n    stats socket {self.stats} mode 600 level admin\n")
        env = {**os.environ, "LISTEN": self.listen,
               **{f"WEB_{i}": address for i, address in enumerate(self.servers, start=1)}}
        self.process = subprocess.Popen([*self.prefix, haproxy_binary(), "-db", "-f", str(CONFIG), "-f", str(extra)],
                                        env=env, stdout=open(self.folder / "haproxy.log", "wb"),
                                        stderr=subprocess.STDOUT)
        wait_until(lambda: self.stats.exists() or self.process.poll() is not None, timeout=10,
                   what="haproxy to start")
        assert self.process.poll() is None, (self.folder / "haproxy.log").read_text()
        return self

    def states(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it: UP, DOWN, ..."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(self.stats))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError:
            return {}
        rows = [line.split(",") for line in data.decode().splitlines() if line and not line.startswith("#")]
        return {row[1]: row[17] for row in rows if row[0] == "servers" and row[1] not in ("BACKEND",)}

    def wait_state(self, server: str, state: str, timeout: float = 20) -> None:
        wait_until(lambda: self.states().get(server, "").startswith(state), timeout=timeout,
                   what=f"haproxy to see {server} {state}")

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)
