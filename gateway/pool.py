"""Pooled SSH connections from the gateway to its targets.

Channels for the same (target, login) share one SSH connection, up to the
target's channel limit (OpenSSH's MaxSessions defaults to 10), so a second
session skips the handshake. A pooled connection that dies takes only its own
channels down; the next request dials afresh.

A burst of new sessions (an agent fleet connecting) reserves slots on a
connection while it is still being dialled, and needs more than one new
connection at a time: up to ``PARALLEL_DIALS`` dials per (target, login) run
at once, below OpenSSH's MaxStartups (10) so sshd never starts dropping them.
A failed dial fails the sessions waiting for it with the same error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncssh
import structlog

from config.models import Target

log = structlog.get_logger("shellgate.pool")

PARALLEL_DIALS = 4


class TargetError(Exception):
    """The target could not be used. ``untrusted`` marks a host key mismatch."""

    def __init__(self, message: str, *, untrusted: bool = False) -> None:
        super().__init__(message)
        self.untrusted = untrusted


def trust_for(target: Target) -> asyncssh.SSHKnownHosts | tuple[list[asyncssh.SSHKey], list, list]:
    """What asyncssh should accept as the target's host key: the pinned key or
    the known_hosts file. Never trust on first use."""
    if target.host_key:
        return ([asyncssh.import_public_key(target.host_key)], [], [])
    assert target.known_hosts is not None  # config guarantees one of the two
    return asyncssh.read_known_hosts(str(target.known_hosts))


@dataclass(eq=False)
class _Pooled:
    dialed: asyncio.Future[asyncssh.SSHClientConnection]
    conn: asyncssh.SSHClientConnection | None = None  # None while dialling
    channels: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    retiring: bool = False  # close() was called; wait_closed has not finished

    @property
    def usable(self) -> bool:
        return not self.retiring and not self.closed.is_set()


class TargetPool:
    """Hands out target connections with a free channel slot."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        default_max_channels: int,
        ciphers: list[str],
        macs: list[str],
    ) -> None:
        self._connect_timeout = connect_timeout
        self._ciphers = ciphers
        self._macs = macs
        self._default_max = default_max_channels
        self._pools: dict[tuple[str, str], list[_Pooled]] = {}
        self._dial_slots: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(
        self, target: Target, login: str
    ) -> tuple[asyncssh.SSHClientConnection, _Pooled]:
        """A connection with a free channel slot, reserved for the caller.
        Call ``release`` with the returned slot when the channel closes."""
        key = (target.name, login)
        limit = target.max_channels or self._default_max
        pooled = self._pools.setdefault(key, [])
        # No await between looking and reserving: the slot is ours.
        for p in pooled:
            if p.usable and p.channels < limit:
                break
        else:
            loop = asyncio.get_running_loop()
            p = _Pooled(loop.create_future())
            pooled.append(p)
            task = loop.create_task(self._dial_into(key, p, target, login))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        p.channels += 1
        try:
            conn = await asyncio.shield(p.dialed)
        except BaseException:
            p.channels -= 1
            raise
        return conn, p

    async def _dial_into(
        self, key: tuple[str, str], p: _Pooled, target: Target, login: str
    ) -> None:
        slots = self._dial_slots.setdefault(key, asyncio.Semaphore(PARALLEL_DIALS))
        try:
            async with slots:
                conn = await self._dial(target, login)
        except BaseException as e:
            p.closed.set()
            pooled = self._pools.get(key, [])
            if p in pooled:
                pooled.remove(p)
            if not p.dialed.done():
                p.dialed.set_exception(
                    e if isinstance(e, TargetError) else TargetError(f"target {target.name}: {e}")
                )
                p.dialed.exception()  # retrieved: no "never retrieved" warning without waiters
            if not isinstance(e, Exception):
                raise
            return
        p.conn = conn
        if p.retiring:  # the target left the config while we dialled
            conn.close()
            p.dialed.set_exception(TargetError(f"target {target.name} was removed"))
            p.dialed.exception()
        else:
            p.dialed.set_result(conn)
        await self._watch(key, p)

    def release(self, slot: _Pooled) -> None:
        slot.channels -= 1
        if slot.channels <= 0 and slot.usable:
            # Keep one idle connection warm per key; close extra idle ones.
            for pooled in self._pools.values():
                if slot in pooled:
                    idle = [p for p in pooled if p.channels <= 0 and p.usable]
                    if len(idle) > 1 and slot.conn is not None:
                        # A connection being closed must not be handed out:
                        # its next channel would fail "SSH connection closed".
                        slot.retiring = True
                        slot.conn.close()
                    break

    async def _watch(self, key: tuple[str, str], p: _Pooled) -> None:
        assert p.conn is not None
        try:
            await p.conn.wait_closed()
        finally:
            p.closed.set()
            pooled = self._pools.get(key, [])
            if p in pooled:
                pooled.remove(p)

    async def _dial(self, target: Target, login: str) -> asyncssh.SSHClientConnection:
        try:
            known_hosts = trust_for(target)
            return await asyncio.wait_for(
                asyncssh.connect(
                    target.host,
                    target.port,
                    username=login,
                    client_keys=[str(target.identity)],
                    known_hosts=known_hosts,
                    agent_path=None,
                    config=None,
                    preferred_auth="publickey",
                    # Our preference decides this leg: aes-gcm costs far less
                    # CPU per byte than asyncssh's default chacha20 (bench/).
                    encryption_algs=self._ciphers,
                    mac_algs=self._macs,
                    keepalive_interval=30,
                    keepalive_count_max=3,
                ),
                self._connect_timeout,
            )
        except asyncssh.HostKeyNotVerifiable as e:
            raise TargetError(
                f"host key of target {target.name} does not match the pinned key ({e.reason})",
                untrusted=True,
            ) from None
        except asyncssh.PermissionDenied:
            raise TargetError(
                f"target {target.name} refused the gateway's login as {login}"
            ) from None
        except TimeoutError:
            raise TargetError(
                f"target {target.name} did not answer within {self._connect_timeout:g}s"
            ) from None
        except (OSError, asyncssh.Error) as e:
            reason = (
                getattr(e, "strerror", None)
                or getattr(e, "reason", None)
                or str(e)
                or type(e).__name__
            )
            raise TargetError(
                f"cannot reach target {target.name} ({target.host}:{target.port}): {reason}"
            ) from None

    def drop_target(self, name: str) -> None:
        """Close pooled connections to a target (it left the config)."""
        for (tname, _login), pooled in list(self._pools.items()):
            if tname == name:
                for p in pooled:
                    p.retiring = True
                    if p.conn is not None:
                        p.conn.close()

    async def close(self) -> None:
        for p in [p for pooled in self._pools.values() for p in pooled if p.conn is None]:
            p.retiring = True  # a dial still under way: closed when it lands
        conns = [p.conn for pooled in self._pools.values() for p in pooled if p.conn is not None]
        for c in conns:
            c.close()
        for c in conns:
            try:
                await asyncio.wait_for(c.wait_closed(), 5)
            except (TimeoutError, Exception):  # closing anyway; nothing to tell anyone
                pass
        for task in list(self._tasks):
            task.cancel()
        self._pools.clear()
