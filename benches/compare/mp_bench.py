#!/usr/bin/env python3
"""Python's process pools on the comparison workloads (standard library only).

Usage: mp_bench.py <pool> <workload>   with pool in {mp, ppe}
Prints one JSON object: {"pool", "workload", "value", "unit", ...}.
Each workload mirrors a forkpool one in benches/compare/main.rs; the
runner (benches/compare/run) interleaves them and takes medians.
"""
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

WORKERS = 2
CTX = mp.get_context("fork")


def square(x):
    return x * x


def echo(b):
    return b


def spin(n):
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1000003
    return acc


def crash(_):
    os.abort()


def make_pool(kind, workers=WORKERS):
    if kind == "mp":
        return CTX.Pool(workers)
    return ProcessPoolExecutor(workers, mp_context=CTX)


def pool_map(kind, pool, f, items, chunksize=None):
    if kind == "mp":
        if chunksize is None:
            return pool.map(f, items)
        return pool.map(f, items, chunksize)
    return list(pool.map(f, items, chunksize=chunksize or 1))


def apply(kind, pool, f, arg):
    if kind == "mp":
        return pool.apply(f, (arg,))
    return pool.submit(f, arg).result()


def close(kind, pool):
    if kind == "mp":
        pool.close()
        pool.join()
    else:
        pool.shutdown()


def warm(kind, pool):
    pool_map(kind, pool, square, range(WORKERS * 4), 1)


def nap(ms):
    time.sleep(ms / 1000)
    return ms


def w_map_tiny(kind, workers=WORKERS):
    # As the forkpool side: a fresh pool, a warm-up, then the first map
    # ("value"), and the median of three more ("steady"). Warm-up: with 2
    # workers, 64 jobs; with more, one 20 ms job per worker submitted one by
    # one, whose end less 20 ms is "build_ms". ProcessPoolExecutor's default
    # chunksize is 1: a million items would take minutes, so it gets 100,000
    # and one map (its rate is what is compared).
    n = 1_000_000 if kind == "mp" else 100_000
    t = time.perf_counter()
    pool = make_pool(kind, workers)
    result = {"unit": "items/s"}
    if workers <= WORKERS:
        pool_map(kind, pool, square, range(64))
    else:
        if kind == "mp":
            hs = [pool.apply_async(nap, (20,)) for _ in range(workers)]
            [h.get() for h in hs]
        else:
            fs = [pool.submit(nap, 20) for _ in range(workers)]
            [f.result() for f in fs]
        result["build_ms"] = (time.perf_counter() - t) * 1e3 - 20

    def one():
        t = time.perf_counter()
        out = pool_map(kind, pool, square, range(n))
        dt = time.perf_counter() - t
        assert out[-1] == (n - 1) ** 2
        return n / dt

    result["value"] = one()
    if kind == "mp":
        steady = sorted(one() for _ in range(3))
        result["steady"] = steady[1]
    close(kind, pool)
    return result


def w_map_chunk1(kind):
    n = 20_000
    pool = make_pool(kind)
    warm(kind, pool)
    t = time.perf_counter()
    out = pool_map(kind, pool, square, range(n), 1)
    dt = time.perf_counter() - t
    assert out[-1] == (n - 1) ** 2
    close(kind, pool)
    return {"value": n / dt, "unit": "items/s"}


def w_apply(kind):
    n = 2000
    pool = make_pool(kind)
    warm(kind, pool)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        apply(kind, pool, square, i)
        lat.append(time.perf_counter() - t)
    close(kind, pool)
    lat.sort()
    return {"value": lat[n // 2] * 1e6, "unit": "us", "p99": lat[int(n * 0.99)] * 1e6}


def w_payload(kind):
    # Payloads are made as the map reads them, after the pool exists (as on
    # the forkpool side).
    n, size = 200, 1 << 20
    pool = make_pool(kind)
    # Warm with a few payloads, as the forkpool side does.
    pool_map(kind, pool, echo, [bytes([i]) * size for i in range(4)], 1)
    t = time.perf_counter()
    out = pool_map(kind, pool, echo, (bytes([i % 256]) * size for i in range(n)), 1)
    dt = time.perf_counter() - t
    assert all(len(o) == size for o in out)
    close(kind, pool)
    return {"value": n * size / dt / 1e9, "unit": "GB/s"}


def cpu_time(kind, workers):
    jobs = [300_000] * 16
    pool = make_pool(kind, workers)
    warm(kind, pool)
    t = time.perf_counter()
    pool_map(kind, pool, spin, jobs, 1)
    dt = time.perf_counter() - t
    close(kind, pool)
    return dt


def w_cpu(kind):
    one = cpu_time(kind, 1)
    two = cpu_time(kind, 2)
    return {"value": one / two, "unit": "x"}


def w_startup(kind):
    n = 20
    times = []
    for _ in range(n):
        t = time.perf_counter()
        pool = make_pool(kind)
        apply(kind, pool, square, 3)
        close(kind, pool)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"value": times[n // 2] * 1e3, "unit": "ms"}


WORKLOADS = {
    "map_tiny": w_map_tiny,
    "map_tiny_64": lambda kind: w_map_tiny(kind, 64),
    "map_tiny_256": lambda kind: w_map_tiny(kind, 256),
    "map_chunk1": w_map_chunk1,
    "apply": w_apply,
    "payload_1mib": w_payload,
    "cpu_2v1": w_cpu,
    "startup": w_startup,
}

if __name__ == "__main__":
    kind, workload = sys.argv[1], sys.argv[2]
    result = WORKLOADS[workload](kind)
    result.update(pool=kind, workload=workload)
    print(json.dumps(result))
