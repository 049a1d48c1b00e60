"""Control actions on the running daemon, from two doors:

- the local control socket ``<data_dir>/control.sock`` (mode 0600; one JSON
  request line in, one JSON reply line out) used by ``shellgate close|lock|
  unlock|reload``;
- the control login over SSH (``ssh alice@gw sessions|connections|attach ID|
  close ID --reason TEXT``).

Both end in the same ``Controller`` methods, so a close is a close whichever
door it came through.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from config.models import User
from store.events import (
    SYSTEM,
    AuditEntry,
    CloseReason,
    ConnectionKind,
    ConnectionState,
    UserLock,
    format_time,
)

if TYPE_CHECKING:
    from gateway.daemon import Gateway
    from gateway.live import LiveConnection
    from gateway.server import ClientSession

log = structlog.get_logger("shellgate.control")


class ControlError(Exception):
    """A refused or impossible control action; the text is for the user."""


class Controller:
    """The control actions, with the checks and audit entries they share."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def close(
        self,
        connection_id: str,
        reason_text: str,
        actor: str,
        *,
        as_admin: bool,
        client_addr: str = "",
    ) -> LiveConnection:
        live = self.gateway.registry.get(connection_id)
        if live is None:
            raise ControlError(f"no live connection {connection_id} (unknown or already closed)")
        if not as_admin and live.user != actor:
            self._audit(
                actor, "close_refused", f"not the owner of {connection_id}", client_addr, live
            )
            raise ControlError(f"connection {connection_id} is not yours")
        if as_admin and live.user != actor:
            reason, message = CloseReason.ADMIN_CLOSED, reason_text
        else:
            reason = CloseReason.USER_CLOSED
            message = f"closed by {actor}" + (f": {reason_text}" if reason_text else "")
        self._audit(actor, "close", f"{reason.value}: {reason_text}", client_addr, live)
        live.close(reason, actor, message)
        return live

    async def lock(self, user: str, reason_text: str, actor: str) -> int:
        await self.gateway.store.lock_user(UserLock(user=user, actor=actor, reason=reason_text))
        self.gateway.locked.add(user)
        closed = 0
        msg = f"user {user} locked by {actor}" + (f": {reason_text}" if reason_text else "")
        for live in self.gateway.registry:
            if live.user == user:
                live.close(CloseReason.USER_LOCKED, actor, msg)
                closed += 1
        for t in list(self.gateway.transfers):
            if t.user == user:
                t.kick(f"shellgate: {msg}", 1)
        self._audit(actor, "lock", f"{user}: {reason_text}".rstrip(": "))
        return closed

    async def unlock(self, user: str, actor: str) -> bool:
        was = await self.gateway.store.unlock_user(user)
        self.gateway.locked.discard(user)
        self._audit(actor, "unlock", user)
        return was

    def _audit(
        self,
        actor: str,
        action: str,
        detail: str,
        client_addr: str = "",
        live: LiveConnection | None = None,
    ) -> None:
        self.gateway.store.emit(
            AuditEntry(
                actor=actor,
                action=action,
                client_addr=client_addr,
                detail=detail,
                connection_id=live.id if live else None,
                target=live.target if live else None,
            )
        )


def live_row(live: LiveConnection) -> dict[str, Any]:
    """A live connection in the contract's connection fields."""
    return {
        "id": live.id,
        "user": live.user,
        "target": live.target,
        "target_user": live.login,
        "client_addr": live.client_addr,
        "name": live.name,
        "kind": live.kind.value,
        "state": live.state.value,
        "opened_at": format_time(live.opened_at),
        "bytes_in": live.bytes_in,
        "bytes_out": live.bytes_out,
        "cast_path": live.recording.cast_path if live.recording else None,
    }


def render_rows(rows: list[dict[str, Any]], as_json: bool) -> str:
    if as_json:
        return "".join(json.dumps(r) + "\n" for r in rows)
    cols = ["id", "user", "target", "target_user", "name", "state", "opened_at", "client_addr"]
    table = [cols] + [[_printable(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in table
    )


def _printable(value: object) -> str:
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ControlError(message)


def _control_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ssh USER@gateway", add_help=False)
    sub = p.add_subparsers(dest="cmd")
    for name in ("sessions", "connections"):
        s = sub.add_parser(name, add_help=False)
        s.add_argument("--json", action="store_true")
    a = sub.add_parser("attach", add_help=False)
    a.add_argument("id")
    c = sub.add_parser("close", add_help=False)
    c.add_argument("id")
    c.add_argument("--reason", default="")
    sub.add_parser("help", add_help=False)
    return p


CONTROL_HELP = """\
shellgate control login. Commands:
  sessions [--json]             your live connections
  attach ID                     reattach to one of your connections (use ssh -t)
  close ID [--reason TEXT]      close one of your connections
  connections [--json]          every live connection (admin)
  close ID --reason TEXT        close any connection (admin)
To reach a target, log in as LOGIN@TARGET: ssh -p PORT root@web1@gateway
"""


async def run_control_login(session: ClientSession, user: User) -> None:
    """``ssh alice@gw COMMAND``: the control login's commands, on the channel."""
    gw = session.gateway
    out = session.chan
    if session.server.login != user.name:
        session.refuse(
            f"control login {session.server.login!r} does not match your key's user {user.name!r}",
            audit_action="refused",
        )
        return
    try:
        argv = shlex.split(session.command or "help")
        args = _control_parser().parse_args(argv)
    except (ValueError, ControlError) as e:
        session.refuse(f"{e} (try: help)")
        return
    controller = Controller(gw)
    addr = session.server.client_addr
    if args.cmd in (None, "help"):
        out.write(CONTROL_HELP.encode())
        out.exit(0)
    elif args.cmd == "sessions":
        rows = [live_row(lv) for lv in gw.registry if lv.user == user.name]
        out.write(render_rows(rows, args.json).encode())
        out.exit(0)
    elif args.cmd == "connections":
        if not user.is_admin:
            session.refuse("connections is for admins", audit_action="refused")
            return
        out.write(render_rows([live_row(lv) for lv in gw.registry], args.json).encode())
        out.exit(0)
    elif args.cmd == "close":
        try:
            live = controller.close(
                args.id, args.reason, user.name, as_admin=user.is_admin, client_addr=addr
            )
        except ControlError as e:
            session.refuse(str(e))
            return
        out.write(f"closed {live.id}\n".encode())
        out.exit(0)
    elif args.cmd == "attach":
        await _attach(session, user, args.id)


async def _attach(session: ClientSession, user: User, connection_id: str) -> None:
    gw = session.gateway
    live = gw.registry.get(connection_id)
    if live is None:
        session.refuse(f"no live connection {connection_id} (unknown or already closed)")
        return
    if live.user != user.name and not user.is_admin:
        session.refuse(
            f"connection {connection_id} is not yours",
            audit_action="attach_refused",
            target=live.target,
        )
        return
    if live.kind is not ConnectionKind.SHELL or live.target_chan is None:
        session.refuse(f"connection {connection_id} is not a shell that can be attached")
        return
    if live.state is ConnectionState.CONNECTED and live.client is not None:
        gw.store.emit(
            AuditEntry(
                actor=user.name,
                action="takeover",
                client_addr=session.server.client_addr,
                connection_id=live.id,
                target=live.target,
                detail=f"attached from {session.server.client_addr}",
            )
        )
    session.live = live
    live.attach(session, redraw=session.pty is not None)
    session.start_reading()


class ControlServer:
    """The daemon's local control socket."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.controller = Controller(gateway)
        self.path = gateway.data_dir / "control.sock"
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                request = json.loads(line)
                reply = await self.handle(request)
            except ControlError as e:
                reply = {"ok": False, "error": str(e)}
            except (ValueError, KeyError, TypeError) as e:
                reply = {"ok": False, "error": f"bad request: {e}"}
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        actor = str(req.get("as") or SYSTEM)
        c = self.controller
        if op == "close":
            live = c.close(
                str(req["id"]),
                str(req.get("reason", "")),
                actor,
                as_admin=True,
                client_addr="control socket",
            )
            return {"ok": True, "id": live.id}
        if op == "lock":
            n = await c.lock(str(req["user"]), str(req.get("reason", "")), actor)
            return {"ok": True, "closed": n}
        if op == "unlock":
            was = await c.unlock(str(req["user"]), actor)
            return {"ok": True, "was_locked": was}
        if op == "reload":
            problems = self.gateway.reload(actor)
            if problems:
                return {
                    "ok": False,
                    "error": "config refused; the old one stays:\n" + "\n".join(problems),
                }
            return {"ok": True}
        if op == "list":
            return {
                "ok": True,
                "connections": [live_row(lv) for lv in self.gateway.registry],
                "tasks": len(asyncio.all_tasks()),  # for leak drills (tests/e2e/test_drills.py)
            }
        raise ControlError(f"unknown control operation {op!r}")


async def control_request(data_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request to a running daemon's control socket."""
    path = data_dir / "control.sock"
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no gateway running (no control socket at {path})") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}") from None
    try:
        writer.write((json.dumps(request) + "\n").encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
    if not line:
        raise ControlError("the gateway closed the control connection without a reply")
    reply: dict[str, Any] = json.loads(line)
    return reply
