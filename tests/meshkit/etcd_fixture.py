"""A real etcd server for the MeshKit tests: Debian's `etcd` (package etcd-server) on
127.0.0.1 with free ports and a temporary data dir, started by the test session.

A missing binary fails the tests that need it (CI installs the package): the etcd backend is
part of MeshKit, so skipping would hide it.
"""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class EtcdServer:
    """One single-member etcd cluster; `endpoint` is its client HOST:PORT. With `tls` (CA file,
    server cert, server key, client cert, client key) clients need TLS and a client
    certificate signed by that CA."""

    def __init__(self, workdir: Path, tls: tuple[str, str, str, str, str] | None = None) -> None:
        self.workdir = workdir
        self.tls = tls
        self.log_path = workdir / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self._ports: tuple[int, int] | None = None  # kept for a restart

    def start(self) -> EtcdServer:
        """Start etcd (again: same ports and data, as after a crash or an upgrade)."""
        binary = shutil.which("etcd")
        if binary is None:
            raise AssertionError("etcd is not installed: apt-get install -y etcd-server")
        if self._ports is None:
            self._ports = (_free_port(), _free_port())
        client, peer = self._ports
        self.endpoint = f"{HOST}:{client}"
        scheme = "https" if self.tls else "http"
        args = [
            binary, "--name", "meshkit-test", "--data-dir", str(self.workdir / "data"),
            "--listen-client-urls", f"{scheme}://{self.endpoint}",
            "--advertise-client-urls", f"{scheme}://{self.endpoint}",
            "--listen-peer-urls", f"http://{HOST}:{peer}",
            "--initial-advertise-peer-urls", f"http://{HOST}:{peer}",
            "--initial-cluster", f"meshkit-test=http://{HOST}:{peer}",
            "--logger", "zap", "--log-outputs", str(self.log_path),
        ]
        if self.tls:
            ca, cert, key = self.tls[:3]
            args += ["--trusted-ca-file", ca, "--cert-file", cert, "--key-file", key,
                     "--client-cert-auth"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"etcd did not become healthy within {START_TIMEOUT} s"
                                     f"\n{self.log()}")
            time.sleep(0.05)
        return self

    def healthy(self) -> bool:
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls[0])
            context.load_cert_chain(self.tls[3], self.tls[4])
        scheme = "https" if self.tls else "http"
        try:
            with urllib.request.urlopen(f"{scheme}://{self.endpoint}/health", timeout=1,
                                        context=context) as reply:
                return json.load(reply).get("health") == "true"
        except (OSError, ValueError):
            return False

    def ctl(self, *args: str, user: str | None = None, stdin: str | None = None) -> str:
        """Run `etcdctl` (v3 API) against this server as `user` ("name:password"); its
        stdout, AssertionError with its stderr if it fails."""
        binary = shutil.which("etcdctl")
        if binary is None:
            raise AssertionError("etcdctl is not installed: apt-get install -y etcd-client")
        command = [binary, "--endpoints", self.endpoint, "--command-timeout", "10s"]
        if user is not None:
            command += ["--user", user]
        done = subprocess.run([*command, *args], input=stdin, capture_output=True, text=True,
                              timeout=30, check=False, env={"ETCDCTL_API": "3"})
        if done.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {done.stderr}")
        return done.stdout

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
