"""A plain TCP relay, benchmark #5's floor: ``python -m bench.tcp_relay LISTEN TARGET [BURN_US]``.

Every connection to port LISTEN on 127.0.0.1 is relayed byte for byte to
port TARGET on 127.0.0.1, on uvloop, with backpressure both ways (a leg whose
peer's send buffer is full stops reading) and nothing else: no SSH, no
recording, no store. Run under #5's load in place of the gateway, it shows
what any relay in one Python process costs on this machine in this hour (the
extra loopback hops, the loop's callbacks), so the gateway's figure can be
read against it: the part above the floor is SSH and recording.

With ``BURN_US`` it also spins that many microseconds of its own CPU time on
every read before relaying it: a relay that costs what a heavier one would,
with nothing else of that one's (``bench.run --floor-burn-us``). Run at a few
levels in one hour, it says how much CPU per second a relay may use on this
machine before #5's echo p99 passes the goal.

Prints ``ready`` on stdout once listening; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import cast

import uvloop

BURN_NS = 0
"""CPU nanoseconds spun per read (``BURN_US`` x 1000)."""


def burn(ns: int) -> None:
    """Spin until this thread has used ``ns`` more of CPU time: CPU time, not
    wall time, so a preemption mid-spin does not shorten the cost."""
    clock = time.thread_time_ns
    end = clock() + ns
    while clock() < end:
        pass


class Leg(asyncio.Protocol):
    """One side of a relayed connection; ``peer`` is the other side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Leg | None = None
        self.early: list[bytes] = []  # client bytes before the target leg is up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if BURN_NS:
            burn(BURN_NS)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write_eof()
        return True  # half-close: the other direction may still carry data

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # The peer's send buffer is full: stop reading this side, and resume.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve(listen_port: int, target_port: int) -> None:
    loop = asyncio.get_running_loop()

    dialling: set[asyncio.Task[None]] = set()

    async def dial(client: Leg) -> None:
        try:
            _, target = await loop.create_connection(Leg, "127.0.0.1", target_port)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        if client.transport is None:  # the client left while we dialled
            if target.transport is not None:
                target.transport.close()
            return
        target.peer, client.peer = client, target
        assert target.transport is not None
        for data in client.early:
            target.transport.write(data)
        client.early.clear()

    def accept() -> Leg:
        client = Leg()
        task = loop.create_task(dial(client))
        dialling.add(task)
        task.add_done_callback(dialling.discard)
        return client

    server = await loop.create_server(accept, "127.0.0.1", listen_port, backlog=1024)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print("ready", flush=True)
    async with server:
        await stop


def main() -> int:
    global BURN_NS
    try:
        if len(sys.argv) not in (3, 4):
            raise ValueError
        listen, target = int(sys.argv[1]), int(sys.argv[2])
        burn_us = int(sys.argv[3]) if len(sys.argv) == 4 else 0
        if burn_us < 0:
            raise ValueError
    except ValueError:
        print("usage: python -m bench.tcp_relay LISTEN TARGET [BURN_US]", file=sys.stderr)
        return 2
    BURN_NS = burn_us * 1000
    uvloop.run(serve(listen, target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
