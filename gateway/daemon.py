"""The running gateway: config, store, listener, pool, registry, and the
clean start and stop around them.

``Gateway.start`` opens the store (closing what a crashed run left live),
makes host keys, and listens; ``Gateway.stop`` closes every connection with
``gateway_shutdown``, finishes every cast, and drains the store.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh
import structlog

from config.loader import load_config, parse_authorized_key
from config.models import GatewayConfig, OnFailure
from gateway import sshtune
from gateway.live import LiveConnection, SessionRegistry
from gateway.loopwatch import LoopWatch
from gateway.pool import TargetPool
from gateway.recording import (
    RecordingError,
    Recordings,
    SessionRecording,
    audit_recording_failure,
    repair_cast,
    repair_torn_casts,
)
from gateway.server import ClientSession, GatewayServer
from store.base import EventStore, QueryFilter
from store.events import SYSTEM, AuditEntry, CloseReason, ConnectionKind

log = structlog.get_logger("shellgate.daemon")

TRIM_AFTER_CLOSES = 100
"""Net drop in live connections (from their peak since the last trim) after
which the heap's free pages are handed back to the OS."""

TRIM_INTERVAL = 60.0
"""At most one heap trim per this many seconds."""

TRIM_DELAY = 5.0
"""Seconds from noticing the drop to the trim: the rest of the burst of
closes, and the client connections behind them, are freed by then."""


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another libc, or no libc)."""
    try:
        fn: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return fn


_malloc_trim = _find_malloc_trim()


class StartError(Exception):
    """The daemon cannot start: a data directory, host key, listen address or
    control socket it cannot use. The message is one line for the operator."""


def ensure_host_key(path: Path) -> asyncssh.SSHKey:
    """The host key at ``path``, generated (ed25519, mode 0600) if missing.
    Raises StartError when it can be neither read nor created."""
    try:
        if path.exists():
            return asyncssh.read_private_key(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="shellgate host key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    except OSError as e:
        raise StartError(f"cannot read or create the host key {path}: {e.strerror or e}") from None
    except (asyncssh.KeyImportError, ValueError) as e:
        raise StartError(f"host key {path} is not a usable private key: {e}") from None
    log.info("host key generated", path=str(path))
    return key


def key_owners(config: GatewayConfig) -> dict[bytes, str]:
    """Public key blob -> user name, from ``keys`` and ``authorized_keys_file``."""
    owners: dict[bytes, str] = {}
    for u in config.users:
        lines = list(u.keys)
        if u.authorized_keys_file is not None:
            lines += u.authorized_keys_file.read_text().splitlines()
        for line in lines:
            key = parse_authorized_key(line.strip())
            if key is not None:
                owners[key.public_data] = u.name
    return owners


def cert_authorities(
    config: GatewayConfig,
) -> tuple[asyncssh.SSHAuthorizedKeys | None, dict[int, str]]:
    """CA entries for user certificates, one per (CA, user) with
    ``principals="USER"``, and a map from each entry's principals object to the
    user, so the entry asyncssh matched tells who logged in."""
    if not config.gateway.user_ca_keys or not config.users:
        return None, {}
    lines = [
        f'cert-authority,principals="{u.name}" {ca}'
        for ca in config.gateway.user_ca_keys
        for u in config.users
    ]
    keys = asyncssh.import_authorized_keys("\n".join(lines))
    owners: dict[int, str] = {}
    # asyncssh has no public accessor for parsed entries; entries keep file order.
    entries = keys._ca_entries
    for line, entry in zip(lines, entries, strict=True):
        name = line.split('"', 2)[1]
        owners[id(entry.options["principals"])] = name
    return keys, owners


class Gateway:
    """One shellgate daemon."""

    def __init__(self, config: GatewayConfig, config_path: str | None, store: EventStore) -> None:
        self.config = config
        self.config_path = config_path
        self.store = store
        self.key_owner = key_owners(config)
        self.cert_authorities, self.principal_owner = cert_authorities(config)
        self.locked: set[str] = set()
        self.registry = SessionRegistry(store)
        self.transfers: set[ClientSession] = set()
        self.pool = TargetPool(
            connect_timeout=config.gateway.connect_timeout,
            default_max_channels=config.gateway.max_channels_per_target,
            ciphers=config.gateway.ciphers,
            macs=config.gateway.macs,
        )
        self.recordings = Recordings(self)
        self.unauthenticated = 0
        self._live_peak = 0  # most live connections since the last heap trim
        self._last_trim = 0.0
        self._trim_at: float | None = None
        self.listener: asyncssh.SSHAcceptor | None = None
        self.stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.control: object | None = None

    @property
    def data_dir(self) -> Path:
        return self.config.gateway.data_dir

    @property
    def port(self) -> int:
        assert self.listener is not None
        return int(self.listener.get_port())

    async def start(self) -> None:
        """Open the store, repair what a crash left, listen. Raises StartError
        (or the store's StoreError) with a line for the operator."""
        sshtune.install()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.data_dir / "recordings").mkdir(exist_ok=True, mode=0o700)
        except OSError as e:
            raise StartError(
                f"cannot create the data directory {self.data_dir}: {e.strerror or e}"
            ) from None
        await self.store.open()
        for event in await self.store.recover_crashed():
            log.warning(
                "closed connection left live by an unclean stop", connection_id=event.connection_id
            )
            cast = self.data_dir / "recordings" / f"{event.connection_id}.cast"
            if cast.exists():
                repair_cast(cast, "closed: gateway_crashed")
        await self._repair_orphan_casts()
        self.locked = {lock.user for lock in await self.store.locks()}
        host_keys = [ensure_host_key(p) for p in self.config.gateway.host_keys]
        g = self.config.gateway
        try:
            self.listener = await asyncssh.create_server(
                lambda: GatewayServer(self),
                g.listen_host,
                g.listen_port,
                server_host_keys=host_keys,
                encoding=None,
                line_editor=False,
                allow_scp=False,
                login_timeout=g.login_grace_time or None,
                encryption_algs=g.ciphers,
                mac_algs=g.macs,
                keepalive_interval=60,
                keepalive_count_max=3,
                agent_forwarding=False,
                x11_forwarding=False,
                allow_pty=True,
            )
        except OSError as e:  # socket.gaierror included: a name that does not resolve
            raise StartError(f"cannot listen on {g.listen}: {e.strerror or e}") from None
        from gateway.control import ControlServer

        control = ControlServer(self)
        try:
            await control.start()
        except OSError as e:
            self.listener.close()
            raise StartError(
                f"cannot create the control socket {control.path}: {e.strerror or e}"
            ) from None
        self.control = control
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_idle()))
        registry = self.registry
        self._tasks.append(loop.create_task(LoopWatch(busy=lambda: len(registry) > 0).run()))
        log.info(
            "listening",
            listen=f"{g.listen_host}:{self.port}",
            config=self.config_path or "<embedded default>",
            data_dir=str(self.data_dir),
            native_packet_crypto=sshtune.native(),  # gateway._wire built and on
        )

    async def _repair_orphan_casts(self) -> None:
        """Torn casts whose connection never reached the store (see
        ``repair_torn_casts``): repaired, logged and audited."""
        newest = await self.store.events(QueryFilter(limit=1))
        recordings = self.data_dir / "recordings"
        for cast in repair_torn_casts(recordings, newest[0].time if newest else None):
            log.warning(
                "repaired a recording whose connection is not in the store",
                connection_id=cast.stem,
                path=str(cast),
            )
            self.store.emit(
                AuditEntry(
                    actor=SYSTEM,
                    action="recording_repaired",
                    connection_id=cast.stem,
                    detail=f"{cast}: torn last line cut after an unclean stop; "
                    "its connection's events were not committed",
                )
            )

    def start_recording(self, live: LiveConnection) -> SessionRecording | None:
        """The connection's recording; raises RecordingError when it cannot be
        created and ``on_failure`` is ``close``."""
        try:
            return self.recordings.start(live)
        except OSError as e:
            why = f"recording for {live.id} could not be created: {e.strerror or e}"
            audit_recording_failure(live, why)
            if self.config.recording.on_failure is OnFailure.CLOSE:
                raise RecordingError(why) from None
            log.error("recording failed; connection continues unrecorded", error=why)
            return None

    async def _watch_idle(self) -> None:
        """Close connections with no client input for their idle timeout,
        warning the client ``idle_warning`` seconds before."""
        while True:
            await asyncio.sleep(1)
            # One call per tick: a loop variable here would keep the last
            # connection (recording, screens, channels) alive for as long as
            # the registry stays empty after it closed.
            now = time.monotonic()
            self._check_idle(now)
            self._trim_after_closes(now)

    def _check_idle(self, now: float) -> None:
        for live in self.registry:
            limit = live.idle_timeout
            if limit <= 0 or live.closed or live.client is None:
                continue
            idle = now - live.last_input
            warn_at = max(limit - self.config.gateway.idle_warning, limit * 0.5)
            if idle >= limit:
                live.close(
                    CloseReason.IDLE_TIMEOUT, SYSTEM, f"no input for {limit:g}s (idle_timeout)"
                )
            elif idle >= warn_at and not live.idle_warned:
                live.idle_warned = True
                left = int(limit - idle)
                if live.kind is ConnectionKind.SHELL:
                    live.client.chan.write_stderr(
                        f"\r\nshellgate: idle for {int(idle)}s; closing in {left}s "
                        f"unless you type something\r\n".encode()
                    )

    def _trim_after_closes(self, now: float) -> None:
        """After many connections closed, give their memory back to the OS.

        A closed session's objects are not all freed at once: some wait in
        reference cycles for a full collection (pyte's stream and screen are
        cyclic by construction), which an idle gateway may not run for a long
        time; and glibc keeps freed pages (bench/session_memory.py: ~30 MB of
        RSS after 1,000 sessions closed, returned by ``malloc_trim``). So,
        ``TRIM_DELAY`` after a net drop of ``TRIM_AFTER_CLOSES`` connections
        (at most once per ``TRIM_INTERVAL``): a full ``gc.collect()`` when at
        most ``TRIM_AFTER_CLOSES`` connections are left (it walks every live
        object: cheap only then; it frees what a collection would free later
        anyway), then ``malloc_trim(0)`` (~10 ms after 1,000 sessions).
        pymalloc arenas still holding any live object stay: fragmentation."""
        live = len(self.registry)
        self._live_peak = max(self._live_peak, live)
        if self._trim_at is None:
            dropped = self._live_peak - live >= TRIM_AFTER_CLOSES
            if dropped and now - self._last_trim >= TRIM_INTERVAL:
                self._trim_at = now + TRIM_DELAY
            return
        if now < self._trim_at:
            return
        self._trim_at = None
        self._live_peak = live
        self._last_trim = now
        started = time.perf_counter()
        if live <= TRIM_AFTER_CLOSES:
            gc.collect()
        if _malloc_trim is not None:
            _malloc_trim(0)
        took_ms = round((time.perf_counter() - started) * 1000, 1)
        log.debug("memory handed back", live=live, took_ms=took_ms)

    def reload(self, actor: str = SYSTEM) -> list[str]:
        """Re-read the config; close what it no longer allows. Returns problems
        (empty on success); a bad config leaves the old one in force."""
        from config.loader import ConfigError

        try:
            new = load_config(self.config_path) if self.config_path else self.config
        except ConfigError as e:
            self.store.emit(
                AuditEntry(actor=actor, action="reload_refused", detail="; ".join(e.problems))
            )
            log.warning("reload refused", problems=e.problems)
            return e.problems
        self.config = new
        self.key_owner = key_owners(new)
        self.cert_authorities, self.principal_owner = cert_authorities(new)
        for live in self.registry:
            target = new.target(live.target)
            user = new.user(live.user)
            if target is None:
                live.close(
                    CloseReason.TARGET_REMOVED, actor, f"target {live.target} removed by {actor}"
                )
                self.pool.drop_target(live.target)
            elif user is None or not new.allows(user, target, live.login):
                live.close(
                    CloseReason.USER_LOCKED,
                    actor,
                    f"access of {live.user} to {live.login}@{live.target} "
                    f"removed by {actor} (config reload)",
                )
        self.store.emit(
            AuditEntry(
                actor=actor,
                action="reload",
                detail=f"config {self.config_path or '<embedded>'} reloaded",
            )
        )
        log.info("config reloaded", actor=actor)
        return []

    async def stop(self) -> None:
        """Clean stop: no new connections, every live one closed and recorded."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        log.info("stopping")
        if self.listener is not None:
            self.listener.close()
        for task in self._tasks:
            task.cancel()
        if self.control is not None:
            await self.control.stop()  # type: ignore[attr-defined]
        for live in self.registry:
            live.close(CloseReason.GATEWAY_SHUTDOWN, SYSTEM, "gateway shutting down")
        for t in list(self.transfers):
            t.kick("shellgate: gateway shutting down", 1)
        # Let the close messages reach clients before the transports go.
        await asyncio.sleep(0.05)
        await self.pool.close()
        if self.listener is not None:
            try:
                await asyncio.wait_for(self.listener.wait_closed(), 5)
            except TimeoutError:
                pass
        await self.recordings.close()
        try:
            # The writer retries rather than drop; a store that stays broken
            # (disk full) must not hang the stop forever.
            await asyncio.wait_for(self.store.close(), 30)
        except TimeoutError:
            log.error("store did not drain within 30s; stopping without the last events")
        log.info("stopped")
