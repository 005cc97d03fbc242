"""A userspace wire with delay and loss, for kernels without ``sch_netem`` (tests/netns.py).

``python netns_relay.py IF_A IF_B --delay-ms D --loss-pct P [--seed S]`` copies every Ethernet
frame between the interfaces ``IF_A`` and ``IF_B`` (both in the namespace it runs in), holding each
one ``D`` ms and dropping each with probability ``P`` %, independently in each direction. It prints
``ready`` once both sockets are open, and runs until SIGTERM/SIGKILL.

Frames are read and written with ``AF_PACKET`` sockets in ``PACKET_VNET_HDR`` mode, so TCP's large
GSO frames pass through whole with their offload header (a 64 KiB frame is one read and one write,
not 45); a frame dropped is therefore a whole GSO frame, as ``tc netem loss`` drops whole frames too.
The delay is constant, so frames keep their order. Standard library only: the harness starts it
with the test's interpreter.
"""

from __future__ import annotations

import argparse
import collections
import random
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
MAX_FRAME = 10 + 65536 + 14 + 64  # virtio-net header + the largest GSO frame + link header + slack
READS_PER_WAKEUP = 64  # frames taken from one socket before the other gets a turn
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
SOCKET_BUFFER = 64 << 20  # a burst of GSO frames must not overflow the socket (that would be loss we did not ask for)


def open_port(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # root may exceed net.core.*mem_max
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


class Direction:
    """Frames read from ``src`` waiting to be written to ``dst`` at their release time."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay_s: float, loss: float, rng: random.Random):
        self.src, self.dst = src, dst
        self.delay_s, self.loss, self.rng = delay_s, loss, rng
        self.queue: collections.deque = collections.deque()

    def take(self, now: float) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                frame = self.src.recv(MAX_FRAME)
            except BlockingIOError:
                return
            except OSError:  # the link went down (a cut): nothing to read now
                return
            if self.loss and self.rng.random() < self.loss:
                continue
            self.queue.append((now + self.delay_s, frame))

    def release(self, now: float) -> float | None:
        """Write every frame that is due; return the seconds until the next one (None: none)."""
        q = self.queue
        while q and q[0][0] <= now:
            frame = q.popleft()[1]
            try:
                self.dst.send(frame)
            except OSError:  # a cut link or a full queue drops the frame, as a wire would
                pass
        return q[0][0] - now if q else None


def serve(a: str, b: str, delay_ms: float, loss_pct: float, seed: int) -> None:
    pa, pb = open_port(a), open_port(b)
    rng = random.Random(seed)
    dirs = {pa: Direction(pa, pb, delay_ms / 1000.0, loss_pct / 100.0, rng),
            pb: Direction(pb, pa, delay_ms / 1000.0, loss_pct / 100.0, rng)}
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        waits = [w for w in (d.release(now) for d in dirs.values()) if w is not None]
        readable, _, _ = select.select(list(dirs), [], [], min(waits) if waits else None)
        now = time.monotonic()
        for s in readable:
            dirs[s].take(now)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("if_a")
    p.add_argument("if_b")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--loss-pct", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    serve(args.if_a, args.if_b, args.delay_ms, args.loss_pct, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
