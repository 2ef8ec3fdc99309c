"""The Celery side of benches/celery/run: one trivial task, results in Redis.

Run as a worker (`celery -A celery_bench worker ...`) or as the producer
(`python celery_bench.py produce N`), which submits N tasks, waits for
every result, and prints a JSON line like forkpool's redis_drain.
"""
import json
import os
import sys
import time

from celery import Celery

URL = os.environ["BENCH_REDIS"]
app = Celery("celery_bench", broker=URL, backend=URL)
app.conf.update(
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def inc(x):
    return x + 1


def produce(n):
    warm = [inc.delay(i) for i in range(int(os.environ.get("BENCH_WARM", "16")))]
    for r in warm:
        r.get(timeout=60)
    time.sleep(0.3)
    start = time.perf_counter()
    results = [inc.delay(i) for i in range(n)]
    submitted = time.perf_counter() - start
    wrong = 0
    for i, r in enumerate(results):
        if r.get(timeout=600) != i + 1:
            wrong += 1
    seconds = time.perf_counter() - start
    assert wrong == 0, f"{wrong} tasks came back wrong"
    print(json.dumps({
        "jobs": n,
        "submit_seconds": round(submitted, 3),
        "seconds": round(seconds, 3),
        "jobs_per_s": round(n / seconds),
    }))


if __name__ == "__main__" and sys.argv[1:2] == ["produce"]:
    produce(int(sys.argv[2]))
