"""The real OpenSSH ``ssh``, ``scp`` and ``sftp``, run non-interactively.

Every run ignores the user's and the system's ssh config (``-F /dev/null``),
never offers an agent's keys, never prompts (``BatchMode``), and gets a clean
HOME. A run that outlives its timeout is killed by pid, with its process
group, and raises :class:`ClientTimeout` carrying the output so far.

The login goes in ``-o User=...`` rather than ``user@host`` because gateway
logins contain an ``@`` themselves (``root@web1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from harness import procs
from harness.env import clean_env


class Completed(NamedTuple):
    """How a client run ended: unpacks as ``(returncode, stdout, stderr)``."""

    returncode: int
    stdout: bytes
    stderr: bytes


class ClientTimeout(TimeoutError):
    """A client ran longer than allowed; it was killed."""

    def __init__(self, args: Sequence[str], timeout: float, stdout: bytes, stderr: bytes):
        super().__init__(
            f"{args[0]} still running after {timeout}s (killed): {' '.join(args)}\n"
            f"stdout so far: {stdout[-2000:]!r}\nstderr so far: {stderr[-2000:]!r}"
        )
        self.stdout = stdout
        self.stderr = stderr


@dataclasses.dataclass(frozen=True)
class SshClient:
    """Where and as whom the OpenSSH tools connect.

    ``known_hosts`` set: the server's key is checked strictly against that file;
    unset: any host key is accepted (the harness's default, like the brief's
    ``StrictHostKeyChecking=no``). ``options`` are extra ``-o`` values, e.g.
    ``("SetEnv=SHELLGATE_SESSION=build-42",)``.
    """

    host: str
    port: int
    login: str
    key: Path
    known_hosts: Path | None = None
    options: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def with_options(self, *options: str) -> SshClient:
        return dataclasses.replace(self, options=(*self.options, *options))

    def as_login(self, login: str) -> SshClient:
        return dataclasses.replace(self, login=login)

    def with_key(self, key: Path) -> SshClient:
        return dataclasses.replace(self, key=key)

    # -- argument lists ---------------------------------------------------------------

    def common_options(self) -> list[str]:
        """Options shared by ssh, scp and sftp (port excluded: its flag differs)."""
        opts = [
            "-F", "/dev/null",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10",
            "-o", f"User={self.login}",
            "-i", str(self.key),
        ]  # fmt: skip
        if self.known_hosts is None:
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            opts += [
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
            ]  # fmt: skip
        for opt in self.options:
            opts += ["-o", opt]
        return opts

    def ssh_args(
        self, command: str | Sequence[str] | None = None, *, tty: bool | None = None
    ) -> list[str]:
        """``ssh ... HOST [COMMAND]``. ``tty``: True forces a pty (``-tt``), False
        refuses one (``-T``), None lets ssh decide."""
        args = ["ssh", *self.common_options(), "-p", str(self.port)]
        if tty is True:
            args.append("-tt")
        elif tty is False:
            args.append("-T")
        args.append(self.host)
        if command is not None:
            args += [command] if isinstance(command, str) else list(command)
        return args

    def remote(self, path: str | os.PathLike[str]) -> str:
        """A remote path for scp: ``HOST:PATH`` (the login rides in ``-o User``)."""
        return f"{self.host}:{path}"

    def scp_args(
        self, *paths: str | os.PathLike[str], legacy: bool = False, recursive: bool = False
    ) -> list[str]:
        """``scp ... SRC... DST``; remote paths come from :meth:`remote`.
        ``legacy`` uses the old scp protocol (``-O``) instead of sftp."""
        args = ["scp", *self.common_options(), "-P", str(self.port), "-q"]
        if legacy:
            args.append("-O")
        if recursive:
            args.append("-r")
        return args + [str(p) for p in paths]

    def sftp_args(self, batch: str = "-") -> list[str]:
        """``sftp -b BATCH ... HOST``; ``-`` reads the batch from stdin."""
        return ["sftp", *self.common_options(), "-P", str(self.port), "-b", batch, self.host]

    # -- runs -------------------------------------------------------------------------

    async def ssh(
        self,
        command: str | Sequence[str] | None = None,
        *,
        input: bytes | None = None,
        tty: bool | None = None,
        timeout: float = 30.0,
    ) -> Completed:
        return await run(
            self.ssh_args(command, tty=tty), input=input, timeout=timeout, env=dict(self.env)
        )

    async def scp(
        self,
        *paths: str | os.PathLike[str],
        legacy: bool = False,
        recursive: bool = False,
        timeout: float = 60.0,
    ) -> Completed:
        args = self.scp_args(*paths, legacy=legacy, recursive=recursive)
        return await run(args, timeout=timeout, env=dict(self.env))

    async def sftp(self, commands: Sequence[str], *, timeout: float = 60.0) -> Completed:
        """Run sftp batch ``commands`` (``put a /tmp/b``, ``get ...``); a failing
        command makes sftp exit non-zero, as ``-b`` does."""
        batch = ("\n".join(commands) + "\n").encode()
        return await run(self.sftp_args(), input=batch, timeout=timeout, env=dict(self.env))

    def ssh_sync(
        self,
        command: str | Sequence[str] | None = None,
        *,
        input: bytes | None = None,
        tty: bool | None = None,
        timeout: float = 30.0,
    ) -> Completed:
        """:meth:`ssh` for tests that are not coroutines."""
        return run_sync(
            self.ssh_args(command, tty=tty), input=input, timeout=timeout, env=dict(self.env)
        )


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    return clean_env(**(extra or {}))


def _kill_group(pid: int) -> None:
    # The client leads its own process group (start_new_session), so this ends
    # it and anything it spawned (a ProxyCommand, scp's ssh) in one call.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run(
    args: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Completed:
    """Run a client to completion; ClientTimeout (after killing it) past ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(env),
        start_new_session=True,
    )
    tracked = procs.register(proc.pid, args[0])
    out, err = bytearray(), bytearray()

    async def pump(stream: asyncio.StreamReader | None, into: bytearray) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            into += chunk

    async def feed() -> None:
        if input is None or proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(input)
            await proc.stdin.drain()
            proc.stdin.close()

    try:
        await asyncio.wait_for(
            asyncio.gather(feed(), pump(proc.stdout, out), pump(proc.stderr, err), proc.wait()),
            timeout,
        )
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        raise ClientTimeout(args, timeout, bytes(out), bytes(err)) from None
    except BaseException:
        _kill_group(proc.pid)
        await proc.wait()
        raise
    finally:
        procs.unregister(tracked.pid)
    assert proc.returncode is not None
    return Completed(proc.returncode, bytes(out), bytes(err))


def run_sync(
    args: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Completed:
    """:func:`run` without an event loop."""
    popen = subprocess.Popen(
        list(args),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(env),
        start_new_session=True,
    )
    tracked = procs.register(popen.pid, args[0], popen)
    try:
        out, err = popen.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        _kill_group(popen.pid)
        out, err = popen.communicate()
        raise ClientTimeout(args, timeout, out or e.stdout or b"", err or e.stderr or b"") from None
    except BaseException:
        _kill_group(popen.pid)
        popen.wait()
        raise
    finally:
        procs.unregister(tracked.pid)
    return Completed(popen.returncode, out, err)
