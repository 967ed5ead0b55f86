"""Hosts for multi-host tests: one network namespace each, on a bridge the test makes.

Addresses come from 198.18.0.0/15 (the benchmarking range) only, with no
route out. Everything made here (processes, namespaces, veth pairs, the
bridge) is removed by ``Lab.destroy()``, which the tests call in a
``finally``, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET_PREFIX = "198.18"


def can_run() -> str:
    """Why these tests cannot run here, or "" when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "the ip command cannot list network namespaces"
    return ""


def free_subnet(seed: int) -> str:
    """A 198.18.N /24 no address of this machine is in, so concurrent runs do not share one."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for step in range(254):
        subnet = f"{SUBNET_PREFIX}.{1 + (seed + step) % 254}"
        if f" {subnet}." not in used:
            return subnet
    raise RuntimeError("no free /24 left in 198.18.0.0/16")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Host:
    name: str  # short: "redis-1"
    netns: str
    address: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, command: list[str], log: Path, env: dict | None = None, cwd=None) -> subprocess.Popen:
        process = subprocess.Popen(["ip", "netns", "exec", self.netns, *command], env=env, cwd=cwd,
                                   stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def cut(self) -> None:
        """A partition: the host's only link goes down (everything on it keeps running)."""
        ip("-n", self.netns, "link", "set", "eth0", "down")


class Lab:
    """A bridge in the root namespace (which acts as the client host, at .1) and hosts on it."""

    def __init__(self, tag: str):
        self.tag = tag  # keeps names unique between concurrent runs
        self.bridge = f"fb{tag}"
        self.subnet = free_subnet(int(tag))
        self.client_address = f"{self.subnet}.1"
        self.hosts: dict[str, Host] = {}

    def create(self) -> "Lab":
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.client_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str, last_octet: int) -> Host:
        netns = f"fx{self.tag}-{name}"
        outside = f"fv{self.tag}{last_octet}"
        host = Host(name, netns, f"{self.subnet}.{last_octet}")
        self.hosts[name] = host
        ip("netns", "add", netns)
        ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("link", "set", outside, "master", self.bridge, "up")
        ip("-n", netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        return host

    def destroy(self) -> None:
        for host in self.hosts.values():
            for process in host.processes:
                if process.poll() is None:
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for pid in host.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while host.pids() and time.monotonic() < deadline:
                time.sleep(0.05)  # polling in a cleanup loop bounded by its deadline (not a test's condition)
            for process in host.processes:
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", f"fv{self.tag}{host.address.rsplit('.', 1)[1]}"],
                           capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
