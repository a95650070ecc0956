"""Naming the rank that died or hangs. A collective that times out only tells the waiting ranks
that someone did not come; so every rank runs a daemon thread that bumps its own counter in the
rendezvous store all processes already share (one tiny write every few seconds, with its host and
last finished iteration). When a rank's training fails, it reads the counters twice, a few beats
apart, and names the ranks whose counters stood still: processes that are gone, frozen, or on a
node that is down. If the store itself does not answer, rank 0 (which hosts it) is the one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

PREFIX = "heartbeat/"
INTERVAL_S = 2.0


class Heartbeat:
    def __init__(self, iteration: Callable[[], int], interval_s: float = INTERVAL_S):
        self.store = dist.distributed_c10d._get_default_store()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.iteration = iteration
        self.interval_s = interval_s
        self.beats = 0
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self.beats += 1
        self.store.set(f"{PREFIX}{self.rank}", f"{self.beats} {self.iteration()} {self.host}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
            except Exception:  # the store is gone: the run is ending; the report will say so
                return

    def stop(self) -> None:
        self._stop.set()

    def _read(self) -> dict[int, tuple[int, int, str]]:
        """rank -> (beats, last finished iteration, host); ranks that never beat are left out."""
        beats = {}
        for rank in range(self.world):
            key = f"{PREFIX}{rank}"
            if self.store.check([key]):
                count, iteration, host = self.store.get(key).decode().split(" ", 2)
                beats[rank] = (int(count), int(iteration), host)
        return beats

    def silent_ranks(self) -> str:
        """Which ranks stopped beating, in words (for the error message)."""
        try:
            self.store.set_timeout(timedelta(seconds=10 * self.interval_s))
            before = self._read()
            time.sleep(3 * self.interval_s)
            after = self._read()
        except Exception as error:
            return (f"the rendezvous store held by rank 0 does not answer ({str(error).splitlines()[0]}): "
                    "rank 0 or its node is down")
        never = [rank for rank in range(self.world) if rank not in after]
        silent = [rank for rank in after if rank != self.rank and after[rank][0] == before.get(rank, (None,))[0]]
        if not silent and not never:
            return "every rank is still alive (their heartbeats advance)"
        words = [f"rank {rank} (host {after[rank][2]}, last finished iteration {after[rank][1]})" for rank in silent]
        words += [f"rank {rank} (never started its heartbeat)" for rank in never]
        return f"no heartbeat from {', '.join(words)} for {3 * self.interval_s:.0f}s: it died or hangs"
