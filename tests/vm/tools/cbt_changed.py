#!/usr/bin/env python3
"""Guest side of the VM crash tests: which tracking blocks of a tracked image differ from a
copy taken before the load, and whether the change map marks them.

    cbt_changed.py IMAGE COPY SINCE

Compares 4 KiB pieces; a block with a changed piece must carry a change number above SINCE.
Reads the image before the map: data visible in the image was marked before it was issued,
so a map read after it holds that mark.  Prints one JSON object: changed (blocks), pieces
(4 KiB), marked (blocks above SINCE, so blanket marking shows), missing, first (up to 8
missing blocks), generation_id.
"""

import json
import subprocess
import sys

PIECE, CHUNK = 4096, 1 << 20


def main() -> None:
    image, copy, since = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cli = [sys.executable, "-m", "tcmu_pr"]
    store = "file:" + image
    pieces: list[int] = []  # offsets of the changed 4 KiB pieces
    off = 0
    with open(image, "rb") as a, open(copy, "rb") as b:
        while True:
            x, y = a.read(CHUNK), b.read(CHUNK)
            if not x and not y:
                break
            if x != y:
                pieces += [off + i for i in range(0, max(len(x), len(y)), PIECE)
                           if x[i:i + PIECE] != y[i:i + PIECE]]
            off += CHUNK
    info = json.loads(subprocess.check_output([*cli, "cbt", "info", "--store", store]))
    changed = {p // info["block_size"] for p in pieces}
    marks = json.loads(subprocess.check_output([*cli, "cbt", "map", "--json", "--store", store]))
    missing = [b for b in sorted(changed) if marks[b] <= since]
    print(json.dumps({"changed": len(changed), "pieces": len(pieces),
                      "marked": sum(1 for m in marks if m > since), "missing": len(missing),
                      "first": missing[:8], "generation_id": info["generation_id"]}))


if __name__ == "__main__":
    main()
