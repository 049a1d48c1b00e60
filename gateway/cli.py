"""The ``shellgate`` command: serve, check-config, control actions, and the
store queries (registered by ``gateway.report``).

Every expected failure is one line on stderr starting ``shellgate:`` and a
non-zero exit; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from config.loader import ConfigError, load_config
from config.models import GatewayConfig

GC_THRESHOLDS = (20_000, 20, 10)
"""``gc.set_threshold`` for the daemon: a young pass every 20,000 net
allocations of container objects (Python's default is 700)."""


def _config_or_exit(path: str | None, *, check_files: bool = True) -> GatewayConfig:
    try:
        return load_config(path, check_files=check_files)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        raise SystemExit(1) from None


def _store_for(config: GatewayConfig):  # type: ignore[no-untyped-def]
    from store.sqlite import SqliteStore

    return SqliteStore(config.gateway.data_dir / "shellgate.db")


async def _serve(args: argparse.Namespace) -> int:
    import structlog

    from gateway.daemon import Gateway, StartError
    from gateway.logs import configure_logging
    from store.base import StoreError

    config = _config_or_exit(args.config)
    configure_logging(config.gateway.log_level)
    log = structlog.get_logger("shellgate")
    gateway = Gateway(config, args.config, _store_for(config))
    try:
        await gateway.start()
    except StoreError as e:
        print(f"shellgate: {e}", file=sys.stderr)
        return 1
    except StartError as e:
        print(f"shellgate: {e}", file=sys.stderr)
        await gateway.store.close()
        return 1
    except OSError as e:  # a step StartError does not name (repairing a crash's casts)
        print(f"shellgate: cannot start: {e}", file=sys.stderr)
        await gateway.store.close()
        return 1
    # What start-up loaded (modules, config, keys) lives as long as the daemon:
    # out of the cyclic collector's full passes, whose pause grows with the
    # heap and holds every relayed keystroke while it runs.
    gc.collect()
    gc.freeze()
    # The collector's passes hold every keystroke while they run, and a full
    # pass over a thousand sessions' objects took up to ~200 ms (11 of them
    # in one run of bench #5, with the default thresholds of 700/10/10).
    # Young passes ~30x rarer make full ones as rare; the garbage cycles that
    # wait longer are a few MB at most (most objects are freed by refcount).
    gc.set_threshold(*GC_THRESHOLDS)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: gateway.reload("system (SIGHUP)"))
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write(f"{gateway.port}\n")
    await stop.wait()
    log.info("signal received; shutting down")
    await gateway.stop()
    return 0


async def _check_config(args: argparse.Namespace) -> int:
    _config_or_exit(args.config)
    print("ok")
    return 0


async def _control(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    from gateway.control import ControlError, control_request

    config = _config_or_exit(args.config)
    try:
        reply = await control_request(config.gateway.data_dir, request)
    except ControlError as e:
        print(f"shellgate: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if not reply.get("ok"):
        for line in str(reply.get("error", "failed")).splitlines():
            print(f"shellgate: {line}", file=sys.stderr)
        raise SystemExit(1)
    return reply


def _actor(args: argparse.Namespace) -> str:
    return getattr(args, "as_", None) or getpass.getuser()


async def _close(args: argparse.Namespace) -> int:
    reply = await _control(
        args, {"op": "close", "id": args.id, "reason": args.reason, "as": _actor(args)}
    )
    print(f"closed {reply['id']}")
    return 0


async def _lock(args: argparse.Namespace) -> int:
    reply = await _control(
        args, {"op": "lock", "user": args.user, "reason": args.reason, "as": _actor(args)}
    )
    print(f"locked {args.user} ({reply['closed']} connection(s) closed)")
    return 0


async def _unlock(args: argparse.Namespace) -> int:
    reply = await _control(args, {"op": "unlock", "user": args.user, "as": _actor(args)})
    print(f"unlocked {args.user}" + ("" if reply.get("was_locked") else " (was not locked)"))
    return 0


async def _reload(args: argparse.Namespace) -> int:
    await _control(args, {"op": "reload", "as": _actor(args)})
    print("reloaded")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shellgate", description="session-recording SSH bastion")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            "-c",
            default=os.environ.get("SHELLGATE_CONFIG"),
            help="the TOML config (default: embedded default)",
        )
        return p

    s = with_config(sub.add_parser("serve", help="run the gateway"))
    s.add_argument("--ready-file", help=argparse.SUPPRESS)  # tests: the port, once listening
    s.set_defaults(func=_serve)
    c = with_config(sub.add_parser("check-config", help="validate a config and exit"))
    c.set_defaults(func=_check_config)

    cl = with_config(sub.add_parser("close", help="close a connection (running daemon)"))
    cl.add_argument("id")
    cl.add_argument("--reason", required=True)
    cl.add_argument("--as", dest="as_", metavar="NAME", help="admin name recorded as closed_by")
    cl.set_defaults(func=_close)
    lk = with_config(sub.add_parser("lock", help="lock a user: close and refuse their logins"))
    lk.add_argument("user")
    lk.add_argument("--reason", default="")
    lk.add_argument("--as", dest="as_", metavar="NAME")
    lk.set_defaults(func=_lock)
    ul = with_config(sub.add_parser("unlock", help="unlock a user"))
    ul.add_argument("user")
    ul.add_argument("--as", dest="as_", metavar="NAME")
    ul.set_defaults(func=_unlock)
    rl = with_config(sub.add_parser("reload", help="re-read the config (like SIGHUP)"))
    rl.add_argument("--as", dest="as_", metavar="NAME")
    rl.set_defaults(func=_reload)

    try:
        from gateway.report import add_query_commands
    except ImportError:  # the query commands arrive with the store
        pass
    else:
        # Queries read only the store: no key files needed to run them.
        add_query_commands(sub, lambda path: _config_or_exit(path, check_files=False))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is a dependency; this only guards odd platforms
        runner = asyncio.Runner()
    try:
        with runner:
            return int(runner.run(args.func(args)) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
