"""stats() (and so /metrics) answers while writes hold the NVMe write path: it reads counters and
region counts without taking the write lock, so a region seal, an fdatasync or a slow disk never
stalls it. The writes are slowed at their completion (`_inject_faults("stall")`), inside the
engine's write lock."""

from __future__ import annotations

import threading
import time

import pytest

from store_modes import MiB
from conftest import pattern

PAGE = 64 * 1024
STALL_MS, WRITES = 250, 6  # the put holds the write lock for about 1.5 s


def inject(store, *args):
    backend = store._backend
    fn = getattr(backend, "_inject_faults", None) or backend._inject_nvme_faults
    fn(*args)


@pytest.mark.parametrize("kind", ["nvme", "tiered"])
def test_stats_answers_while_a_put_holds_the_write_lock(stores, scratch, kind):
    store = stores.make(kind, write_through=True) if kind == "tiered" else stores.make(kind)
    buf = scratch(store, WRITES * PAGE)
    keys = [f"slow{i}" for i in range(WRITES)]
    for i, k in enumerate(keys):
        buf.write(i * PAGE, pattern(k, PAGE))
    inject(store, "stall", WRITES, 0, STALL_MS)
    result = {}
    writer = threading.Thread(target=lambda: result.setdefault(
        "res", store.batch_put_from(keys, [buf.addr + i * PAGE for i in range(WRITES)], [PAGE] * WRITES)))
    writer.start()
    time.sleep(STALL_MS / 1000 / 2)  # the first write is stalled now, with the write lock held
    waits = []
    for _ in range(3):
        t0 = time.monotonic()
        st = store.stats()
        waits.append(time.monotonic() - t0)
        assert st["nvme"]["region_count"] > 0
    writer.join(30)
    assert result["res"] == [0] * WRITES
    assert max(waits) < STALL_MS / 1000, f"stats() waited {max(waits):.3f} s behind the writes"
