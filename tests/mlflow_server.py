"""A real team-style MLflow server for tests: PostgreSQL 15 + `mlflow server --app-name basic-auth` on 127.0.0.1.

The set-up of infra/mlflow/docker-compose.yaml without Docker: a throw-away PostgreSQL cluster (initdb in a
temporary folder, its own port, password authentication), databases for the tracking store and the auth app,
and the MLflow server in its own process group. Credentials are random per session and travel only through
environment variables and a 0600 config file in the temporary folder; the repository never sees them.
Everything started here is stopped by ``stop()``, by process group, never by name.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import requests

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path:
    """The PostgreSQL server binaries (Debian: /usr/lib/postgresql/<major>/bin); `make venv` installs them."""
    env = os.environ.get("SCTAB_PG_BINDIR")
    candidates = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    which = shutil.which("initdb")
    if which:
        return Path(which).parent
    raise RuntimeError("PostgreSQL server binaries not found (initdb, pg_ctl): run `make postgres` "
                       "(installs the Debian package `postgresql` as root) or set SCTAB_PG_BINDIR")


def _kill_group(p: subprocess.Popen, timeout: float = 20) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


class PostgresServer:
    """initdb + pg_ctl in a temporary folder, listening on 127.0.0.1 only (and a private unix socket)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.bindir = postgres_bindir()
        self.data = self.root / "pgdata"
        self.sock = self.root / "pgsock"
        self.logfile = self.root / "postgres.log"
        self.port = free_port()
        self.user = "sctab"
        self.password = secrets.token_urlsafe(18)
        # PostgreSQL refuses to run as root: then the cluster belongs to the `postgres` system user
        self.run_as = "postgres" if os.geteuid() == 0 else None

    def _cmd(self, args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        if self.run_as:
            args = ["runuser", "-u", self.run_as, "--", *args]
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})}, cwd=self.root)
        if r.returncode:
            raise RuntimeError(f"{' '.join(args[:4])} failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
        return r

    def start(self) -> "PostgresServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chmod(self.root.parent, 0o711)  # the postgres user only traverses the (mkdtemp 0700) parent
            os.chmod(self.root, 0o755)
            self.logfile.touch()
            for p in (self.sock, pwfile, self.logfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self.data.mkdir(exist_ok=True)
            os.chown(self.data, pw.pw_uid, pw.pw_gid)
        try:
            self._cmd([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                       "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"], timeout=120)
        finally:
            pwfile.unlink()
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.logfile),
                    "-o", f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off")
        for db in ("mlflow", "mlflow_auth"):
            self._cmd([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, db],
                      env={"PGPASSWORD": self.password})
        return self

    def pg_ctl(self, action: str, *args: str) -> None:
        self._cmd([str(self.bindir / "pg_ctl"), "-D", str(self.data), action, *args], timeout=90)

    def uri(self, db: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            self.pg_ctl("stop", "-m", "fast", "-w", "-t", "30")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class MlflowServer:
    """`mlflow server --app-name basic-auth` over a PostgreSQL tracking store, bound to 127.0.0.1."""

    def __init__(self, root: Path, postgres: PostgresServer):
        self.root = Path(root)
        self.pg = postgres
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_user = "admin"
        self.admin_password = secrets.token_urlsafe(18)
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "mlflow-server.log"
        self.auth_ini = self.root / "basic_auth.ini"
        self.starts = 0

    def _write_auth_config(self) -> None:
        """The auth app reads its database URI from a file only: written here, 0600, never in the repo."""
        fd = os.open(self.auth_ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                     f"database_uri = {self.pg.uri('mlflow_auth')}\n"
                     "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.auth_ini.exists():
            self._write_auth_config()
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_ini),
               "MLFLOW_AUTH_ADMIN_USERNAME": self.admin_user, "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16) if not self.starts else self._secret,
               "MLFLOW_BACKEND_STORE_URI": self.pg.uri("mlflow")}
        self._secret = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(k, None)
        # the backend store URI goes in through MLFLOW_BACKEND_STORE_URI, so it is not on the command line
        # (visible to every user in `ps`)
        self.proc = subprocess.Popen(
            [MLFLOW, "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--artifacts-destination", (self.root / "artifacts").as_uri(), "--serve-artifacts"],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.root)
        self.starts += 1
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server not healthy in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)

    def client_env(self) -> dict[str, str]:
        """What a client sets: the URI and the admin's credentials, as environment variables only."""
        return {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_TRACKING_USERNAME": self.admin_user,
                "MLFLOW_TRACKING_PASSWORD": self.admin_password}


def start_team_server(root: Path | None = None) -> tuple[PostgresServer, MlflowServer]:
    root = Path(root or tempfile.mkdtemp(prefix="sctab-mlflow-"))
    pg = PostgresServer(root / "pg").start()
    try:
        server = MlflowServer(root / "server", pg).start()
    except BaseException:
        pg.stop()
        raise
    return pg, server


@contextmanager
def team_server_running(prefix: str = "sctab-mlflow-"):
    """A team server for the block (PostgreSQL + `mlflow server --app-name basic-auth`), under a fresh folder in
    /tmp that is removed with it."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    pg, server = start_team_server(root)
    try:
        yield server
    finally:
        server.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
