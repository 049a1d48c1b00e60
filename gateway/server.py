"""The SSH face of the gateway: authentication, routing, and the client side
of every channel.

``GatewayServer`` is one client SSH connection (asyncssh calls it per
connection): it maps the offered key or certificate to a configured user.
``ClientSession`` is one session channel from that client: it decides what the
channel is (a shell or exec to a target, an sftp subsystem, a control command,
or a refusal) and hands the byte stream to a ``LiveConnection``.
``TargetSession`` is the target side of that channel.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncssh
import structlog

from config.models import Target, User
from gateway.live import LiveConnection, PtyRequest
from gateway.pool import TargetError
from gateway.recording import RecordingError
from store.events import SYSTEM, AuditEntry, CloseReason, ConnectionKind

if TYPE_CHECKING:
    from gateway.daemon import Gateway

log = structlog.get_logger("shellgate.server")

FORWARDED_ENV_PREFIXES = ("LANG", "LC_")
SESSION_ENV = "SHELLGATE_SESSION"


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


class AuthFailures:
    """Recent authentication failures per client IP, to slow down guessing:
    each failure from an address waits ``0.1s * failures`` (at most 2s) before
    the refusal. Entries forget after ``window`` seconds; the table is bounded."""

    def __init__(self, window: float = 60.0, max_addrs: int = 10_000) -> None:
        self.window = window
        self.max_addrs = max_addrs
        self._seen: dict[str, tuple[int, float]] = {}

    def record(self, addr: str) -> float:
        """Count one failure from ``addr``; return the delay to impose."""
        now = time.monotonic()
        count, last = self._seen.pop(addr, (0, now))
        count = 1 if now - last > self.window else count + 1
        if len(self._seen) >= self.max_addrs:
            self._seen.pop(next(iter(self._seen)))  # oldest first (insertion order)
        self._seen[addr] = (count, now)
        return min(2.0, 0.1 * count)


AUTH_FAILURES = AuthFailures()


class GatewayServer(asyncssh.SSHServer):
    """One client SSH connection: who it is, and the channels it opens."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.user: User | None = None
        self.login = ""
        self.client_addr = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.client_addr = f"{peer[0]}:{peer[1]}"
        self.gateway.unauthenticated += 1
        self._counted = True
        if self.gateway.unauthenticated > self.gateway.config.gateway.max_startups:
            # Like OpenSSH's MaxStartups: shed load before any crypto work.
            log.warning("too many unauthenticated connections", client_addr=self.client_addr)
            self._uncount()
            conn.close()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.gateway.unauthenticated -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()

    def begin_auth(self, username: str) -> bool:
        self.login = username
        # OpenSSH certificates: the principal is the user name. asyncssh checks
        # principals against the login ("root@web1") unless a CA entry names
        # them, so the gateway keeps one CA entry per user (see Gateway).
        if self.gateway.cert_authorities is not None and self.conn is not None:
            self.conn.set_authorized_keys(self.gateway.cert_authorities)
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        name = self.gateway.key_owner.get(key.public_data)
        if name is None:
            self.gateway.store.emit(
                AuditEntry(
                    actor=SYSTEM,
                    action="auth_failed",
                    client_addr=self.client_addr,
                    detail=f"unknown key {fingerprint(key)} for login {username!r}",
                )
            )
            log.info(
                "auth refused", client_addr=self.client_addr, login=username, key=fingerprint(key)
            )
            # Slow down guessing from one address (asyncssh awaits this).
            await asyncio.sleep(AUTH_FAILURES.record(self.client_addr.rpartition(":")[0]))
            return False
        self.user = self.gateway.config.user(name)
        return True

    def auth_completed(self) -> None:
        self._uncount()
        if self.user is None and self.conn is not None:
            # The matched CA entry's principals object says which user it was.
            matched = self.conn.get_key_option("principals")
            name = self.gateway.principal_owner.get(id(matched))
            if name is not None:
                self.user = self.gateway.config.user(name)

    def session_requested(self) -> ClientSession:
        return ClientSession(self)


class ClientSession(asyncssh.SSHServerSession[bytes]):
    """The client side of one session channel."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.gateway = server.gateway
        self.chan: asyncssh.SSHServerChannel[bytes]
        self.pty: PtyRequest | None = None
        self.command: str | None = None
        self.subsystem: str | None = None
        self.live: LiveConnection | None = None
        self.transfer: TargetSession | None = None
        self.finished = False
        # Data that arrives before the target channel exists (asyncssh
        # resumes reading right after session_started): held, then replayed.
        self._early: list[bytes] | None = []
        self._early_eof = False

    # Attachment protocol -----------------------------------------------------
    @property
    def user(self) -> str:
        return self.server.user.name if self.server.user else "?"

    @property
    def has_pty(self) -> bool:
        return self.pty is not None

    def term_size(self) -> tuple[int, int, int, int]:
        return self.chan.get_terminal_size()

    def kick(self, line: str, status: int) -> None:
        self.finished = True
        # On a pty the client's terminal is raw and its cursor may be mid-line.
        text = (
            f"\r\n{line}\r\n"
            if self.pty is not None and self.live is not None
            else (f"{line}\r\n" if self.pty is not None else f"{line}\n")
        )
        try:
            self.chan.write_stderr(text.encode())
            self.chan.exit(status)
        except (OSError, asyncssh.Error):
            pass

    # asyncssh callbacks ------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:  # type: ignore[override]
        self.chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        cols, rows, pw, ph = term_size
        self.pty = PtyRequest(
            term_type or "xterm", cols or 80, rows or 24, pw, ph, dict(term_modes)
        )
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.subsystem = subsystem
        return True

    def session_started(self) -> None:
        asyncio.get_running_loop().create_task(self._start())

    def data_received(self, data: bytes, datatype: int | None) -> None:
        live = self.live
        if live is not None and live.client is self:
            live.from_client(data)
        elif self.transfer is not None and self.transfer.chan is not None:
            self.transfer.chan.write(data)
        elif self._early is not None:
            # Not connected yet: hold this and stop reading, so the SSH window
            # bounds what the client can send meanwhile.
            self._early.append(data)
            self.chan.pause_reading()

    def start_reading(self) -> None:
        """The target side is ready: replay what arrived early, then read on."""
        early, self._early = self._early, None
        for data in early or ():
            self.data_received(data, None)
        if self._early_eof:
            self.eof_received()
        self.chan.resume_reading()

    def eof_received(self) -> bool:
        if self._early is not None:
            self._early_eof = True
        elif self.live is not None and self.live.client is self:
            self.live.client_eof()
        elif self.transfer is not None and self.transfer.chan is not None:
            self.transfer.chan.write_eof()
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.pty is not None:
            self.pty.cols, self.pty.rows = width, height
        if self.live is not None and self.live.client is self:
            self.live.resize(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self.live is not None and self.live.client is self:
            self.live.signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.live is not None and self.live.client is self:
            self.live.send_break(msec)
        return True

    def pause_writing(self) -> None:
        if self.live is not None and self.live.client is self:
            self.live.client_write_paused()
        elif self.transfer is not None and self.transfer.chan is not None:
            self.transfer.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.live is not None and self.live.client is self:
            self.live.client_write_resumed()
        elif self.transfer is not None and self.transfer.chan is not None:
            self.transfer.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finished = True
        if self.live is not None:
            self.live.client_gone(self)
        if self.transfer is not None and self.transfer.chan is not None:
            self.transfer.chan.close()

    # routing -------------------------------------------------------------------
    def refuse(
        self, line: str, *, audit_action: str | None = None, target: str | None = None
    ) -> None:
        user = self.user
        log.info(
            "refused",
            user=user,
            client_addr=self.server.client_addr,
            login=self.server.login,
            reason=line,
        )
        if audit_action:
            self.gateway.store.emit(
                AuditEntry(
                    actor=user,
                    action=audit_action,
                    client_addr=self.server.client_addr,
                    detail=line,
                    target=target,
                )
            )
        self.kick(f"shellgate: {line}", 1)

    async def _start(self) -> None:
        try:
            await self._route()
        except Exception:  # a bug must not leave the client hanging or leak a traceback
            log.exception(
                "session setup failed", user=self.user, client_addr=self.server.client_addr
            )
            if not self.finished:
                self.kick("shellgate: internal error (see the gateway log)", 1)

    async def _route(self) -> None:
        user = self.server.user
        if user is None:
            self.refuse("no user identity", audit_action="refused")
            return
        if user.name in self.gateway.locked:
            self.refuse(f"user {user.name} is locked", audit_action="login_refused_locked")
            return
        login = self.server.login
        if "@" not in login:
            from gateway.control import run_control_login  # control needs the registry

            await run_control_login(self, user)
            return
        target_user, _, target_name = login.rpartition("@")
        target = self.gateway.config.target(target_name)
        if target is None:
            self.refuse(
                f"no such target: {target_name}",
                audit_action="refused_unknown_target",
                target=target_name,
            )
            return
        if not target_user or not self.gateway.config.allows(user, target, target_user):
            self.refuse(
                f"access denied: {user.name} may not log in to {target_name} as "
                f"{target_user or '(empty)'}",
                audit_action="refused_by_policy",
                target=target_name,
            )
            return
        if self.subsystem is not None or _is_scp(self.command):
            await self._relay_transfer(user, target, target_user)
            return
        await self._open_live(user, target, target_user)

    def _forwarded_env(self) -> dict[str, str]:
        env = self.chan.get_environment()
        return {k: v for k, v in env.items() if k.startswith(FORWARDED_ENV_PREFIXES)}

    async def _open_live(self, user: User, target: Target, login: str) -> None:
        gw = self.gateway
        name = self.chan.get_environment().get(SESSION_ENV) or None
        if name is not None and (len(name) > 128 or not name.isprintable()):
            self.refuse("session name must be printable and at most 128 characters")
            return
        if name is not None and self.command is None:
            existing = gw.registry.find_named(user.name, target.name, login, name)
            if existing is not None and existing.target_chan is not None:
                self.live = existing
                existing.attach(self, redraw=self.pty is not None)
                self.start_reading()
                return
        await gw.store.admission()
        kind = ConnectionKind.EXEC if self.command is not None else ConnectionKind.SHELL
        live = LiveConnection(
            registry=gw.registry,
            user=user.name,
            target=target.name,
            login=login,
            client_addr=self.server.client_addr,
            kind=kind,
            name=name,
            command=self.command,
            pty=self.pty,
            env=self._forwarded_env(),
            detach_timeout=(
                target.detach_timeout
                if target.detach_timeout is not None
                else gw.config.gateway.detach_timeout
            ),
            idle_timeout=(
                target.idle_timeout
                if target.idle_timeout is not None
                else gw.config.gateway.idle_timeout
            ),
        )
        self.live = live
        gw.registry.add(live)
        try:
            live.recording = gw.start_recording(live)
        except RecordingError as e:
            live.emit_open(None)
            live.close(CloseReason.ERROR, SYSTEM, str(e), tell_client=False)
            self.kick(f"shellgate: {e}", 1)
            return
        live.emit_open(live.recording.cast_path if live.recording else None)
        if self.finished:  # the client left while we were setting up
            live.close(
                CloseReason.USER_CLOSED, user.name, "client went away before the target answered"
            )
            return
        try:
            conn, slot = await gw.pool.acquire(target, login)
        except TargetError as e:
            reason = CloseReason.TARGET_UNTRUSTED if e.untrusted else CloseReason.TARGET_UNREACHABLE
            live.close(reason, SYSTEM, str(e), tell_client=False)
            self.kick(f"shellgate: {e}", 1)
            return
        pty = live.pty
        try:
            # TargetSession.session_started attaches this client before the
            # target's first byte is delivered, so nothing is lost to a fast
            # command that prints and exits at once.
            await conn.create_session(
                lambda: TargetSession(live, opener=self, release=lambda: gw.pool.release(slot)),
                self.command,
                env=dict(live.env),  # type: ignore[arg-type]  # str keys are accepted
                request_pty=pty is not None,
                term_type=pty.term_type if pty else None,
                term_size=(pty.cols, pty.rows, pty.pixwidth, pty.pixheight) if pty else None,
                term_modes=pty.modes if pty else None,
                encoding=None,
            )
        except (OSError, asyncssh.Error) as e:
            gw.pool.release(slot)
            why = f"target {target.name} refused the session: {e}"
            live.close(CloseReason.TARGET_UNREACHABLE, SYSTEM, why, tell_client=False)
            self.kick(f"shellgate: {why}", 1)
            return
        if live.client is self:
            self.start_reading()

    async def _relay_transfer(self, user: User, target: Target, login: str) -> None:
        """sftp and scp: relayed byte for byte, not recorded; an audit entry instead."""
        gw = self.gateway
        what = f"subsystem {self.subsystem}" if self.subsystem else f"scp: {self.command}"
        gw.store.emit(
            AuditEntry(
                actor=user.name,
                action="transfer_opened",
                client_addr=self.server.client_addr,
                target=target.name,
                detail=f"{what} as {login}@{target.name}",
            )
        )
        try:
            conn, slot = await gw.pool.acquire(target, login)
            session = TargetSession(None, transfer_client=self)
            await conn.create_session(
                lambda: session, self.command, subsystem=self.subsystem, encoding=None
            )
            self.transfer = session
        except (TargetError, OSError, asyncssh.Error) as e:
            self.kick(f"shellgate: {e}", 1)
            return
        session.release = lambda: gw.pool.release(slot)
        gw.transfers.add(self)
        self.start_reading()


def _is_scp(command: str | None) -> bool:
    if not command:
        return False
    try:
        argv = shlex.split(command)
    except ValueError:
        return False
    return bool(argv) and argv[0].rsplit("/", 1)[-1] == "scp" and ("-t" in argv or "-f" in argv)


class TargetSession(asyncssh.SSHClientSession[bytes]):
    """The target side of a channel: bytes and lifecycle back to the live connection."""

    def __init__(
        self,
        live: LiveConnection | None,
        transfer_client: ClientSession | None = None,
        *,
        opener: ClientSession | None = None,
        release: Any = None,
    ) -> None:
        self.live = live
        self.transfer_client = transfer_client
        self.opener = opener
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.release: Any = release
        self._exit: tuple[str, Any] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:  # type: ignore[override]
        self.chan = chan

    def session_started(self) -> None:
        live, client = self.live, self.opener
        if live is None or client is None or self.chan is None:
            return
        release, self.release = self.release, None
        live.target_started(self.chan, release)
        if client.finished:
            live.close(
                CloseReason.USER_CLOSED, client.user, "client went away before the shell started"
            )
        else:
            live.attach(client, redraw=False)

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.live is not None:
            self.live.from_target(data, datatype)
        elif self.transfer_client is not None:
            self.transfer_client.chan.write(data, datatype)

    def eof_received(self) -> bool:
        if self.live is not None:
            self.live.target_eof()
        elif self.transfer_client is not None:
            try:
                self.transfer_client.chan.write_eof()
            except OSError:
                pass
        return True

    def pause_writing(self) -> None:
        if self.live is not None:
            self.live.target_write_paused()
        elif self.transfer_client is not None:
            self.transfer_client.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.live is not None:
            self.live.target_write_resumed()
        elif self.transfer_client is not None:
            self.transfer_client.chan.resume_reading()

    def exit_status_received(self, status: int) -> None:
        if self.live is not None:
            self.live.exit_status = status
        self._exit = ("status", status)

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        if self.live is not None:
            self.live.exit_signal = (signal, core_dumped, msg, lang)
        self._exit = ("signal", (signal, core_dumped, msg, lang))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.live is not None:
            self.live.target_closed(exc)
            return
        if self.release is not None:
            self.release()
        client = self.transfer_client
        if client is None:
            return
        client.gateway.transfers.discard(client)
        try:
            if self._exit and self._exit[0] == "signal":
                client.chan.exit_with_signal(*self._exit[1])
            elif self._exit:
                client.chan.exit(self._exit[1])
            elif exc is not None:
                client.kick(f"shellgate: connection to target lost: {exc}", 1)
            else:
                client.chan.close()
        except (OSError, asyncssh.Error):
            pass
