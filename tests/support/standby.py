"""A private PostgreSQL primary and its hot standby, streaming, for the read-replica tests.

Made from the PostgreSQL server's own programs (``initdb``, ``pg_basebackup``,
``pg_ctl``) in a temporary folder, on two free ports: the machine's server is
not touched. The standby is a real hot standby (``pg_basebackup -R``): it
replays the primary's WAL and refuses every write, as a managed read replica does.
PostgreSQL refuses to run as root, so as root the programs run as ``postgres``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class NoServerPrograms(RuntimeError):
    """PostgreSQL's server programs (or a user to run them as) are not on this machine."""


@dataclass(frozen=True)
class Pair:
    """The URLs of the primary and of its standby (database ``postgres``, user ``postgres``)."""

    primary: str
    standby: str


def _bin_dir() -> Path:
    """The folder holding all of the server's programs (a ``pg_ctl`` on PATH may be a link)."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))]
    for folder in candidates:
        if all((folder / p).exists() for p in ("initdb", "pg_ctl", "pg_basebackup")):
            return folder
    raise NoServerPrograms("PostgreSQL's server programs (initdb, pg_ctl) are not installed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Runner:
    """Runs the server programs, as ``postgres`` when this process is root."""

    def __init__(self, folder: Path) -> None:
        self.bin = _bin_dir()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise NoServerPrograms("running as root and there is no postgres user") from None
            os.chown(folder, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def __call__(self, program: str, *args: str, timeout: float = 120) -> None:
        command = [*self.prefix, str(self.bin / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")


def _configure(data: Path, port: int, sockets: Path) -> None:
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{sockets}'\nfsync = off\n"
            "shared_buffers = 32MB\nmax_connections = 40\n"
        )


@contextlib.contextmanager
def primary_and_standby() -> Iterator[Pair]:
    """Start a primary and a streaming hot standby of it; stop both and remove them after."""
    folder = Path(tempfile.mkdtemp(prefix="ft-standby-"))
    run = _Runner(folder)
    primary, standby = folder / "primary", folder / "standby"
    p_port, s_port = _free_port(), _free_port()
    started: list[Path] = []
    try:
        # initdb's own pg_hba.conf trusts local and replication connections with --auth=trust.
        run("initdb", "-D", str(primary), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        _configure(primary, p_port, folder)
        run("pg_ctl", "-D", str(primary), "-l", str(folder / "primary.log"), "-w", "start")
        started.append(primary)
        run(
            "pg_basebackup",
            "-h", "127.0.0.1", "-p", str(p_port), "-U", "postgres",
            "-D", str(standby), "-R", "-X", "stream",
        )  # fmt: skip
        # The copy carries the primary's settings; only its port differs.
        _configure(standby, s_port, folder)
        run("pg_ctl", "-D", str(standby), "-l", str(folder / "standby.log"), "-w", "start")
        started.append(standby)
        yield Pair(
            primary=f"postgresql://postgres@127.0.0.1:{p_port}/postgres",
            standby=f"postgresql://postgres@127.0.0.1:{s_port}/postgres",
        )
    finally:
        for data in reversed(started):
            with contextlib.suppress(Exception):
                run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
