"""Live connections and the registry that owns them.

A ``LiveConnection`` is one shell or exec channel to a target. It outlives any
one client: the client side (``Attachment``, an SSH server channel) can go away
and another can attach. This module owns the relay between the two channels
(the hot path), the lifecycle (open, connected, disconnected, closed exactly
once), and the ``SessionRegistry`` that finds connections by id or name.

Hot path rules: ``from_client``/``from_target`` do no awaits, no logging, and
no store calls; backpressure is channel pause/resume in both directions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh
import structlog

from store.base import EventStore
from store.events import (
    SYSTEM,
    ClosedEvent,
    CloseReason,
    ConnectedEvent,
    ConnectionKind,
    ConnectionState,
    DisconnectedEvent,
    OpenEvent,
    new_id,
    utc_now,
)

if TYPE_CHECKING:
    from gateway.recording import SessionRecording

log = structlog.get_logger("shellgate.live")


class Attachment(Protocol):
    """The client side of a live connection (see gateway.server.ClientSession)."""

    chan: asyncssh.SSHServerChannel[bytes]

    @property
    def user(self) -> str: ...

    @property
    def has_pty(self) -> bool: ...

    def term_size(self) -> tuple[int, int, int, int]: ...

    def kick(self, line: str, status: int) -> None:
        """Tell the client one line on stderr and end its channel."""


@dataclass
class PtyRequest:
    term_type: str
    cols: int
    rows: int
    pixwidth: int = 0
    pixheight: int = 0
    modes: dict[int, int] = field(default_factory=dict)


def close_message(reason: CloseReason, closed_by: str, text: str) -> str:
    """The human line for a close: ``closed by admin alice: maintenance``."""
    if reason is CloseReason.ADMIN_CLOSED:
        return f"closed by admin {closed_by}: {text}" if text else f"closed by admin {closed_by}"
    return text


class LiveConnection:
    """One channel to a target, relayed to whichever client is attached."""

    def __init__(
        self,
        *,
        registry: SessionRegistry,
        user: str,
        target: str,
        login: str,
        client_addr: str,
        kind: ConnectionKind,
        name: str | None = None,
        command: str | None = None,
        pty: PtyRequest | None = None,
        env: dict[str, str] | None = None,
        detach_timeout: float = 0.0,
        idle_timeout: float = 0.0,
    ) -> None:
        self.id = new_id()
        self.registry = registry
        self.store: EventStore = registry.store
        self.user = user
        self.target = target
        self.login = login
        self.client_addr = client_addr
        self.kind = kind
        self.name = name
        self.command = command
        self.pty = pty
        self.env = env or {}
        self.detach_timeout = detach_timeout
        self.idle_timeout = idle_timeout
        self.state = ConnectionState.OPEN
        self.client: Attachment | None = None
        self.target_chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.recording: SessionRecording | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.t0 = time.monotonic()
        self.opened_at = utc_now()
        self.last_input = self.t0
        self.idle_warned = False
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None
        self.closed = False
        self.closed_event: ClosedEvent | None = None
        self._target_writable = True
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._out_type: int | None = None
        self._turn_open = False
        self._detach_timer: asyncio.TimerHandle | None = None
        self._release_slot: Callable[[], None] | None = None
        self.log = log.bind(connection_id=self.id, user=user, target=target, target_user=login)

    # -- event helpers --------------------------------------------------------
    def _fields(self) -> dict[str, Any]:
        return {
            "connection_id": self.id,
            "user": self.user,
            "target": self.target,
            "target_user": self.login,
            "client_addr": self.client_addr,
        }

    def emit_open(self, cast_path: str | None) -> None:
        self.store.emit(
            OpenEvent(**self._fields(), kind=self.kind, name=self.name, cast_path=cast_path)
        )

    def now(self) -> float:
        """Seconds since this connection opened (the recording's clock)."""
        return time.monotonic() - self.t0

    # -- the relay (hot path) ---------------------------------------------------
    def from_client(self, data: bytes) -> None:
        chan = self.target_chan
        if chan is None or self.closed:
            return
        self.bytes_in += len(data)
        self.last_input = time.monotonic()
        chan.write(data)
        rec = self.recording
        if rec is not None:
            rec.input(self.last_input - self.t0, data)

    def from_target(self, data: bytes, datatype: int | None) -> None:
        self.bytes_out += len(data)
        client = self.client
        if client is not None:
            # A pty hands sshd output in small reads, one small SSH packet each;
            # relaying them one by one made per-packet cost dominate. The first
            # chunk of a loop turn goes out at once (a keystroke's echo waits
            # for nothing); later ones in the same turn are gathered and go out
            # as one write at the start of the next turn.
            if not self._turn_open:
                self._turn_open = True
                self._loop.call_soon(self.flush_output)
                try:
                    client.chan.write(data, datatype)
                except OSError:
                    pass  # the client's channel closed under us; handled there
            else:
                if self._out and datatype != self._out_type:
                    self._write_gathered()
                self._out.append(data)
                self._out_type = datatype
        rec = self.recording
        if rec is not None:
            rec.output(time.monotonic() - self.t0, data)

    def flush_output(self) -> None:
        """Write the target output gathered this loop turn to the client."""
        self._turn_open = False
        self._write_gathered()

    def _write_gathered(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        client = self.client
        if client is not None:
            try:
                client.chan.write(data, self._out_type)
            except OSError:
                pass  # the client's channel closed under us; handled there

    # Backpressure: a slow client stalls the target, a slow target stalls the client.
    def client_write_paused(self) -> None:
        if self.target_chan is not None:
            self.target_chan.pause_reading()

    def client_write_resumed(self) -> None:
        if self.target_chan is not None:
            self.target_chan.resume_reading()

    def target_write_paused(self) -> None:
        self._target_writable = False
        if self.client is not None:
            self.client.chan.pause_reading()

    def target_write_resumed(self) -> None:
        self._target_writable = True
        if self.client is not None:
            self.client.chan.resume_reading()

    # -- requests from the client ----------------------------------------------
    def resize(self, cols: int, rows: int, pixwidth: int = 0, pixheight: int = 0) -> None:
        if self.target_chan is None or self.closed:
            return
        try:
            self.target_chan.change_terminal_size(cols, rows, pixwidth, pixheight)
        except OSError:
            return
        if self.pty is not None:
            self.pty.cols, self.pty.rows = cols, rows
        if self.recording is not None:
            self.recording.resize(self.now(), cols, rows)

    def signal(self, signame: str) -> None:
        if self.target_chan is not None and not self.closed:
            try:
                self.target_chan.send_signal(signame)
            except (OSError, ValueError):
                pass

    def send_break(self, msec: int) -> None:
        if self.target_chan is not None and not self.closed:
            try:
                self.target_chan.send_break(msec)
            except OSError:
                pass

    def client_eof(self) -> None:
        if self.target_chan is not None and not self.closed:
            try:
                self.target_chan.write_eof()
            except OSError:
                pass

    # -- target lifecycle ------------------------------------------------------
    def target_started(
        self, chan: asyncssh.SSHClientChannel[bytes], release_slot: Callable[[], None]
    ) -> None:
        self.target_chan = chan
        self._release_slot = release_slot

    def target_eof(self) -> None:
        self.flush_output()
        if self.client is not None:
            try:
                self.client.chan.write_eof()
            except OSError:
                pass

    def target_closed(self, exc: Exception | None) -> None:
        """The target channel is gone: the shell exited, or the link broke."""
        if self._release_slot is not None:
            self._release_slot()
            self._release_slot = None
        if self.closed:
            return
        if self.exit_status is not None or self.exit_signal is not None:
            if self.exit_signal is not None:
                msg = f"killed by signal {self.exit_signal[0]}"
            else:
                msg = f"exit status {self.exit_status}"
            self.close(CloseReason.CLIENT_EXIT, self.user, msg, tell_client=False)
        elif exc is not None:
            self.close(
                CloseReason.TARGET_LOST,
                SYSTEM,
                f"connection to target {self.target} lost: {exc}",
            )
        else:
            # Channel closed without an exit status (OpenSSH does this when
            # the session ends abnormally); the shell is gone all the same.
            self.close(
                CloseReason.CLIENT_EXIT, self.user, "closed without exit status", tell_client=False
            )

    # -- attach / detach -------------------------------------------------------
    def attach(self, client: Attachment, *, redraw: bool) -> None:
        """Make ``client`` the attached client (taking over from any other)."""
        self.flush_output()
        old = self.client
        if old is not None and old is not client:
            self.client = None
            self._emit_disconnected()
            old.kick("shellgate: session attached elsewhere", 1)
        self._cancel_detach_timer()
        self.client = client
        if not self._target_writable:
            client.chan.pause_reading()
        if self.state is not ConnectionState.OPEN and client.has_pty:
            cols, rows, pw, ph = client.term_size()
            if self.pty is None or (cols, rows) != (self.pty.cols, self.pty.rows):
                self.resize(cols, rows, pw, ph)
        if redraw and self.recording is not None:
            screen = self.recording.redraw()
            if screen:
                client.chan.write(screen)
        # A paused target (the last client stopped reading) flows again.
        if self.target_chan is not None:
            self.target_chan.resume_reading()
        self.last_input = time.monotonic()
        self.idle_warned = False
        if self.state is not ConnectionState.OPEN and self.recording is not None:
            self.recording.marker(self.now(), f"attached by {client.user}")
        self.state = ConnectionState.CONNECTED
        self.store.emit(ConnectedEvent(**self._fields()))
        self.log.info("connected", attached_by=client.user)

    def client_gone(self, client: Attachment) -> None:
        """The attached client's channel closed (drop, kill, ``~.``)."""
        if self.client is not client or self.closed:
            return
        self._out.clear()  # nobody to send it to; the recording has it
        self.client = None
        if self.kind is ConnectionKind.EXEC or self.target_chan is None:
            self.close(CloseReason.USER_CLOSED, self.user, "client went away")
            return
        # A target stalled by the departed client must keep flowing into the recording.
        self.target_chan.resume_reading()
        self._emit_disconnected()
        if self.recording is not None:
            self.recording.marker(self.now(), "detached")
        if self.detach_timeout > 0:
            self._detach_timer = asyncio.get_running_loop().call_later(
                self.detach_timeout,
                self.close,
                CloseReason.DETACH_TIMEOUT,
                SYSTEM,
                f"detached for longer than {self.detach_timeout:g}s",
            )

    def _emit_disconnected(self) -> None:
        self.state = ConnectionState.DETACHED
        self.store.emit(DisconnectedEvent(**self._fields()))
        self.log.info("disconnected")

    def _cancel_detach_timer(self) -> None:
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None

    # -- the end -----------------------------------------------------------------
    def close(
        self,
        reason: CloseReason,
        closed_by: str,
        message: str = "",
        *,
        tell_client: bool = True,
    ) -> None:
        """End the connection, exactly once: event, recording, both channels."""
        if self.closed:
            return
        self.closed = True
        self._cancel_detach_timer()
        text = close_message(reason, closed_by, message)
        # Dropped, not only closed: the recording points back at this
        # connection, and the cycle would wait for a full gc pass.
        rec, self.recording = self.recording, None
        if rec is not None:
            rec.close(self.now(), reason)
        event = ClosedEvent(
            **self._fields(),
            reason=reason,
            closed_by=closed_by,
            message=text,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
        )
        self.closed_event = event
        self.state = ConnectionState.CLOSED
        self.store.emit(event)
        self.log.info("closed", reason=reason.value, closed_by=closed_by, message=text)
        self.flush_output()  # what the target said before it ended comes first
        client, self.client = self.client, None
        if client is not None:
            if tell_client:
                client.kick(f"shellgate: connection {text or reason.value}", 1)
            elif self.exit_signal is not None:
                sig, core, msg, lang = self.exit_signal
                _quietly(client.chan.exit_with_signal, sig, core, msg, lang)
            else:
                _quietly(client.chan.exit, self.exit_status or 0)
        if self.target_chan is not None:
            _quietly(self.target_chan.close)
        self.registry.forget(self)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except (OSError, asyncssh.Error):
        pass  # the channel is already gone; nothing left to tell it


class SessionRegistry:
    """Every live connection of this daemon, by id and by session name."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._by_id: dict[str, LiveConnection] = {}

    def add(self, conn: LiveConnection) -> None:
        self._by_id[conn.id] = conn

    def forget(self, conn: LiveConnection) -> None:
        self._by_id.pop(conn.id, None)

    def get(self, connection_id: str) -> LiveConnection | None:
        return self._by_id.get(connection_id)

    def find_named(self, user: str, target: str, login: str, name: str) -> LiveConnection | None:
        for c in self._by_id.values():
            if (c.user, c.target, c.login, c.name) == (user, target, login, name) and not c.closed:
                return c
        return None

    def __iter__(self) -> Iterator[LiveConnection]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
