from __future__ import annotations

import threading
from collections.abc import Callable


def race(threads: int, work: Callable[[int], None]) -> None:
    """Run ``work`` on ``threads`` threads released at once."""
    start = threading.Barrier(threads)

    def run(n: int) -> None:
        start.wait(timeout=10)
        work(n)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
