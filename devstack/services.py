"""Private instances of the real servers Loa depends on, run as child processes.

``loa up`` starts its own ``redis-server`` and Mosquitto under ``var/`` when
no ``LOA_REDIS_URL`` / ``LOA_MQTT_URL`` is configured, and the tests start them on free ports.
One code path for both, so the tests exercise what an operator runs. In production these
point at existing servers and nothing here runs.

Nothing they keep is for other users of the machine: each server's directory is 0700, its
config (which holds the Redis password) and its log 0600, and it runs with umask 077, so that
what it writes itself (Redis's dump and append-only files, the broker's database) is 0600
too. Redis asks for a password (``requirepass`` in the config file, never on a command line
that ``ps`` shows), kept 0600 in its directory and reused across restarts; the broker refuses
anonymous logins.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from common.secretfile import new_secret, write_private
from streamer.control.broker import (
    MAX_PACKET_BYTES,
    Account,
    write_acl,
    write_password_file,
)

log = logging.getLogger(__name__)
START_TIMEOUT_S = 10.0
#: what the servers (and ``loa up``'s other children) create is theirs alone: 0600 / 0700
UMASK = 0o077


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may enter (0700): made if missing, tightened if
    it was not (a ``var/`` from before this rule)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def open_private_log(path: Path) -> int:
    """A log file opened for appending, mode 0600 (also if it existed with another mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServiceError(RuntimeError):
    pass


def real_clock_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default this process's) without libfaketime: ``make test-shifted`` preloads it
    into the Python processes to run the tests a year ahead at night, and redis-server dies
    at start with it (its allocator's clock calls recurse into the shim). The servers keep
    the real clock; nothing they do depends on the date."""
    env = dict(os.environ if env is None else env)
    preload = [p for p in env.pop("LD_PRELOAD", "").replace(":", " ").split()
               if "libfaketime" not in p]
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    return {k: v for k, v in env.items()
            if not k.startswith("FAKETIME") and k != "DONT_FAKE_MONOTONIC"}


class Service:
    """A server binary started with one generated config file; ready once its port accepts."""

    binary = ""

    def __init__(self, directory: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.directory = Path(directory).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        raise NotImplementedError

    def argv(self, conf: Path) -> list[str]:
        return [self.binary, str(conf)]

    @property
    def log_path(self) -> Path:
        return self.directory / f"{Path(self.binary).name}.log"

    def start(self) -> None:
        exe = shutil.which(self.binary) or shutil.which(self.binary, path="/usr/sbin:/sbin")
        if exe is None:
            raise ServiceError(f"{self.binary} is not installed (make deps installs it)")
        private_dir(self.directory)
        conf = self.directory / f"{Path(self.binary).name}.conf"
        write_private(conf, self.config())
        with os.fdopen(open_private_log(self.log_path), "ab") as out:
            # a session of its own: a Ctrl-C in the terminal reaches its owner, who stops
            # it after its clients (loa up, devstack/supervise.py), not all at once
            self.proc = subprocess.Popen([exe, *self.argv(conf)[1:]], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.directory, env=real_clock_env(),
                                         start_new_session=True, umask=UMASK)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.binary} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                log.info("%s listening on %s:%d", self.binary, self.host, self.port)
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServiceError(f"{self.binary} did not listen on {self.port}; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Die the hard way (tests of crash recovery)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class RedisServer(Service):
    """``redis-server`` with append-only persistence (fsync every second) under ``directory``,
    which asks for the password kept in ``directory/password`` (made on first use, 0600; the
    same directory keeps its password across restarts). With ``replica_of`` it is a replica
    of that server, with its password (what Redis Sentinel promotes when the master dies)."""

    binary = "redis-server"

    def __init__(self, directory: Path, port: int = 0, host: str = "127.0.0.1",
                 replica_of: RedisServer | None = None) -> None:
        super().__init__(directory, port, host)
        self._password = ""
        self.replica_of = replica_of

    @property
    def password_path(self) -> Path:
        return self.directory / "password"

    @property
    def password(self) -> str:
        if self.replica_of is not None:
            return self.replica_of.password
        if not self._password:
            self._password = read_or_make_password(self.password_path)
        return self._password

    @property
    def url(self) -> str:
        """What a client connects with, the password included: give it to a child in its
        environment or a file, never on its command line, and never log it."""
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    @property
    def public_url(self) -> str:
        """:attr:`url` without the password: for logs and ``var/loa-up.json``."""
        return f"redis://{self.host}:{self.port}/0"

    def config(self) -> str:
        return "\n".join([
            f"bind {self.host}",
            f"port {self.port}",
            f"dir {self.directory}",
            f"requirepass {self.password}",
            "appendonly yes",
            "appendfsync everysec",
            "save 300 1",
            "protected-mode yes",
            "daemonize no",
            "loglevel notice",
            # a master that comes back as a replica after a failover needs it too
            f"masterauth {self.password}",
            *([f"replicaof {self.replica_of.host} {self.replica_of.port}"]
              if self.replica_of is not None else []),
            "",
        ])


class RedisSentinel(Service):
    """A ``redis-server --sentinel`` watching ``master`` as service ``service``: for a pair of
    streamers on a Sentinel-managed Redis (``docs/operations.md``, "A standby streamer").
    It asks for the master's password, and uses it with the master and its replicas. A
    master is down after ``down_after_ms`` without an answer (Redis's default is 30 s; an
    alarm system wants it short)."""

    binary = "redis-server"

    def __init__(self, directory: Path, master: RedisServer, service: str = "loa",
                 port: int = 0, host: str = "127.0.0.1", down_after_ms: int = 1000) -> None:
        super().__init__(directory, port, host)
        self.master = master
        self.service = service
        self.down_after_ms = down_after_ms

    @property
    def log_path(self) -> Path:
        return self.directory / "sentinel.log"

    def argv(self, conf: Path) -> list[str]:
        return [self.binary, str(conf), "--sentinel"]

    def url(self, *others: RedisSentinel) -> str:
        """The streamers' ``redis_url`` for this Sentinel (and ``others``), the password
        included: give it in an environment or a file, never on a command line."""
        hosts = ",".join(f"{s.host}:{s.port}" for s in (self, *others))
        return (f"redis+sentinel://:{quote(self.master.password, safe='')}@{hosts}/"
                f"{self.service}/0")

    def config(self) -> str:
        # Sentinel rewrites its file (what it learnt of replicas and other Sentinels): it
        # is ours, 0600, in its own directory
        return "\n".join([
            f"bind {self.host}",
            f"port {self.port}",
            f"dir {self.directory}",
            f"requirepass {self.master.password}",
            f"sentinel monitor {self.service} {self.master.host} {self.master.port} 1",
            f"sentinel auth-pass {self.service} {self.master.password}",
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
            f"sentinel failover-timeout {self.service} 10000",
            "protected-mode yes",
            "daemonize no",
            "",
        ])


PASSWORD_CHARS = re.compile(r"[A-Za-z0-9_-]{16,}")


def read_or_make_password(path: Path) -> str:
    """The password in ``path``, or a new random one written there (0600)."""
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = new_secret(24)
        write_private(path, password + "\n")
        return password
    if not PASSWORD_CHARS.fullmatch(password):
        raise ServiceError(f"{path}: the password must be 16 or more letters, digits, - or _ "
                           "(delete the file for a new one)")
    return password


class Mosquitto(Service):
    """A private ``mosquitto`` with logins and ACL from :meth:`set_accounts`, retained
    messages persisted under ``directory``."""

    binary = "mosquitto"

    def __init__(self, directory: Path, port: int = 0, host: str = "127.0.0.1",
                 max_packet_bytes: int = MAX_PACKET_BYTES) -> None:
        super().__init__(directory, port, host)
        self.max_packet_bytes = max_packet_bytes

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def password_path(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.directory / "acl"

    def argv(self, conf: Path) -> list[str]:
        return [self.binary, "-c", str(conf)]

    def config(self) -> str:
        d = self.directory
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_path}",
            f"acl_file {self.acl_path}",
            f"listener {self.port} {self.host}",
            "persistence true",
            # the streamer signals the broker to re-read logins and ACL
            # (streamer/control/devices.py)
            f"pid_file {d}/mosquitto.pid",
            f"persistence_location {d}/",
            "autosave_interval 60",
            f"max_packet_size {self.max_packet_bytes}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:  # as root it would switch to user "mosquitto", who cannot
            lines.append(f"user {getpass.getuser()}")  # read or write our directory
        return "\n".join(lines) + "\n"

    def set_accounts(self, accounts: Iterable[Account]) -> None:
        """Write the password file and the ACL; a running broker re-reads both."""
        accounts = list(accounts)
        private_dir(self.directory)
        write_password_file(self.password_path, accounts)
        write_acl(self.acl_path, accounts)
        if self.proc is not None and self.proc.poll() is None:
            self.reload()

    def start(self) -> None:
        private_dir(self.directory)
        for path in (self.password_path, self.acl_path):
            if not path.exists():  # nobody may log in until set_accounts says who
                write_private(path, "")
        super().start()

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads the password file and the ACL (existing sessions stay
        connected; new permissions apply to their next publish and subscribe)."""
        if self.proc is None or self.proc.poll() is not None:
            raise ServiceError("mosquitto is not running")
        self.proc.send_signal(signal.SIGHUP)
