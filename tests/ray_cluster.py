"""Real local Ray clusters for tests: `ray start --head` plus more nodes on 127.0.0.1, torn down afterwards.

Each node runs `ray start --block` in its own process group, so stopping it kills only what this test
started (never `ray stop`, which would take down every Ray on the machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")
# `ray start` enables token authentication (token in ~/.ray/auth_token); clients must say they use it
CLIENT_ENV = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def kill_group(p: subprocess.Popen) -> None:
    """SIGTERM the process group a test started (start_new_session=True), SIGKILL if it lingers."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, n_nodes: int = 2, cpus_per_node: int = 1):
        self.n_nodes, self.cpus = n_nodes, cpus_per_node
        # short path: Ray's unix sockets live under the temp dir and have a ~100-character limit
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _start(self, args: list[str]) -> subprocess.Popen:
        log = Path(self.temp_dir) / f"node{len(self.procs)}.log"
        self.logs.append(log)
        env = {**os.environ, **CLIENT_ENV, "RAY_TRAIN_V2_ENABLED": "1"}
        env.pop("RAY_ADDRESS", None)
        p = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", f"--num-cpus={self.cpus}",
                              "--num-gpus=0", "--node-ip-address=127.0.0.1", "--object-store-memory=150000000",
                              *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def start(self, timeout: float = 120) -> "LocalCluster":
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"])
        self._wait_nodes(1, timeout)
        for _ in range(self.n_nodes - 1):
            self._start([f"--address={self.address}"])
        self._wait_nodes(self.n_nodes, timeout)
        return self

    def alive_nodes(self) -> list[dict]:
        code = ("import ray, json; ray.init(address='%s', logging_level='ERROR', log_to_driver=False);"
                "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))" % self.address)
        try:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                               env={**os.environ, **CLIENT_ENV})
        except subprocess.TimeoutExpired:
            return []
        if r.returncode:
            return []
        import json

        return json.loads(r.stdout.strip().splitlines()[-1])

    def _wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p, log in zip(self.procs, self.logs):
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited with {p.returncode}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
            if all(p.poll() is None for p in self.procs) and len(self.alive_nodes()) >= n:
                return
        raise TimeoutError(f"Ray cluster did not reach {n} nodes in {timeout} s")

    def stop_node(self, index: int) -> None:
        p = self.procs[index]
        self._kill_group(p)

    @staticmethod
    def _kill_group(p: subprocess.Popen) -> None:
        kill_group(p)

    def stop(self) -> None:
        for p in reversed(self.procs):
            self._kill_group(p)
        # anything that escaped its group but belongs to this cluster's temp dir or GCS port
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info.get("cmdline") or [])
            if self.temp_dir in cmd or f":{self.port}" in cmd:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
