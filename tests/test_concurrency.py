"""Concurrent readers and writers from several threads on one store."""

from __future__ import annotations

import threading

import pytest

from conftest import BACKENDS, pattern

PAGE = 64 * 1024


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_writers_and_readers_never_see_wrong_bytes(open_store, buffers, backend):
    store = open_store(io_backend=backend, capacity="12MiB", region_size="2MiB", queue_depth=4)
    errors: list[str] = []
    writers, readers, rounds, batch = 2, 4, 25, 8
    first_batch_written = threading.Event()

    def writer(w):
        buf = buffers(PAGE * batch)
        store.register_buffer(buf.addr, buf.size)
        for r in range(rounds):
            keys = [f"w{w}-r{r}-{i}" for i in range(batch)]
            for i, k in enumerate(keys):
                buf.write(i * PAGE, pattern(k, PAGE))
            res = store.batch_put_from(keys, [buf.addr + i * PAGE for i in range(batch)], [PAGE] * batch)
            if res != [0] * batch:
                errors.append(f"put {res}")
            first_batch_written.set()

    def reader(t):
        buf = buffers(PAGE * batch)
        store.register_buffer(buf.addr, buf.size)
        first_batch_written.wait(timeout=60)
        for r in range(rounds * 2):
            keys = [f"w{(t + i) % writers}-r{(r // 2) % rounds}-{i}" for i in range(batch)]
            res = store.batch_get_into(keys, [buf.addr + i * PAGE for i in range(batch)], [PAGE] * batch)
            for i, (k, n) in enumerate(zip(keys, res)):
                if n == PAGE:
                    if buf.read(i * PAGE, PAGE) != pattern(k, PAGE):
                        errors.append(f"wrong bytes for {k}")
                elif n != -704:
                    errors.append(f"get {k} -> {n}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    threads += [threading.Thread(target=reader, args=(t,)) for t in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert errors == []
    st = store.stats()["nvme"]
    assert st["checksum_failures"] == 0
    assert st["evicted_regions"] > 0  # the test also exercised reclaim under readers
    assert st["hits"] > 0
