"""bench/store: the cost of the store operations the functions make, against the collection's size.

    .venv/bin/python bench/store/run.py [--large N] [--ops N]

The functions read and write documents by `_id` (the versioned store: a find, a conditional
replace or delete of the head, an insert of a version). On MongoDB those are index lookups;
on FerretDB 1.24 with SQLite they were table scans until scripts/patches/ made them use the
`_id` index. Each operation is timed in a collection of 10 documents and in one of `--large`,
in the same run against the same server: a ratio near 1 means the cost does not grow with
the data.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from execmesh.settings import Settings

DOCUMENT = {"status": "running", "version": 1, "spec": {"script": "print(1)\n" * 20}}

Operation = Callable[[Collection[dict[str, Any]], str, int], object]
OPERATIONS: dict[str, Operation] = {
    "find_one {_id}": lambda c, key, n: c.find_one({"_id": key}),
    "find_one {_id, version}": lambda c, key, n: c.find_one({"_id": key, "version": {"$gte": 0}}),
    "replace_one {_id}": lambda c, key, n: c.replace_one({"_id": key}, {**DOCUMENT, "version": n}),
    "replace_one {_id, version $lt}": lambda c, key, n: c.replace_one(
        {"_id": key, "version": {"$lt": 10**9}}, {**DOCUMENT, "version": n}
    ),
    "delete_one {_id, version $lte} (no match)": lambda c, key, n: c.delete_one(
        {"_id": key, "version": {"$lte": -1}}
    ),
    "insert_one": lambda c, key, n: c.insert_one({**DOCUMENT, "_id": uuid.uuid4().hex}),
}


def median_ms(collection: Collection[dict[str, Any]], operation: Operation, ops: int) -> float:
    key = "d-last"
    samples = []
    for n in range(ops):
        start = time.perf_counter()
        operation(collection, key, n)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--ops", type=int, default=100)
    args = parser.parse_args()
    client: MongoClient[dict[str, Any]] = MongoClient(Settings.from_env().mongodb_url)
    database = client[f"bench_store_{uuid.uuid4().hex[:8]}"]
    try:
        collections = {}
        for size in (10, args.large):
            collection = database[f"docs_{size}"]
            collection.insert_many([{**DOCUMENT, "_id": f"d{n}"} for n in range(size - 1)])
            collection.insert_one({**DOCUMENT, "_id": "d-last"})
            collections[size] = collection
        print(f"| operation | 10 documents, ms | {args.large:,} documents, ms | ratio |")
        print("|---|---:|---:|---:|")
        for name, operation in OPERATIONS.items():
            # Interleaved, so that drift on a shared machine hits both sizes alike.
            small = median_ms(collections[10], operation, args.ops)
            large = median_ms(collections[args.large], operation, args.ops)
            print(f"| {name} | {small:.2f} | {large:.2f} | {large / small:.1f}x |")
    finally:
        client.drop_database(database.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
