#!/usr/bin/env python3
"""Print a fastproxy stats segment as JSON.

Usage: python tools/shm_dump.py /dev/shm/fastproxy.<master-pid>.stats

The file is mapped read-only (PROT_READ): this tool can never disturb a
running master or its workers. Exit status 1 if the file is not a segment
this fastproxy understands.
"""

from __future__ import annotations

import json
import mmap
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout
    from fastproxy.stats.export import to_json
    from fastproxy.stats.shm import Segment

    if len(argv) != 2:
        print(f"usage: {argv[0]} SEGMENT_FILE", file=sys.stderr)
        return 1
    try:
        with open(argv[1], "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    except (OSError, ValueError) as exc:
        print(f"shm_dump: {argv[1]}: {exc}", file=sys.stderr)
        return 1
    try:
        seg = Segment.attach(mm)
    except ValueError as exc:
        print(f"shm_dump: {argv[1]}: {exc}", file=sys.stderr)
        mm.close()
        return 1
    print(json.dumps(to_json(seg.snapshot()), indent=2))
    seg.release()
    mm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
