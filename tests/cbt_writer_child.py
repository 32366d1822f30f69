"""A server writing through the data path until it is killed (tests/test_cbt_crash.py).

argv: KIND IMAGE SEED. KIND "python": FileDataBackend writes; "native": WRITE(10)s through
the C ring loop (simulated kernel side), punts answered by the emulation. Every write puts
a nonzero pattern into an image that started as zeros, so the blocks written on disk can
be told afterwards from the image alone. Prints "ready" once writing.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ring_support import BLOCK, make_device, rw10

from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.cbt.mapfile import CbtMap
from tcmu_pr.emulation import DeviceInfo, Emulator
from tcmu_pr.ring.handler import RingHandler


def main() -> None:
    kind, image, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    size = os.path.getsize(image)
    rnd = random.Random(seed)
    m = CbtMap.open(image)
    data = FileDataBackend(image, cbt=m)
    if kind == "python":
        print("ready", flush=True)
        while True:
            off = rnd.randrange(0, size - 1)
            length = min(rnd.choice([1, 512, 4096, 9000]), size - off)
            data.write(off, bytes([rnd.randrange(1, 256)]) * length)
    dev = make_device("native", Path(image).parent, size=size, image=image,
                      cmdr_size=1 << 16, data_size=1 << 20, ring_args={"cbt": m})  # fmt: skip
    handler = RingHandler(dev.ring, dev.sim.notify_fd, event_size=dev.sim.event_size,
                          emulate=Emulator(DeviceInfo.from_size("c", size), data).emulate)
    print("ready", flush=True)
    total = size // BLOCK
    while True:
        for _ in range(8):
            blocks = rnd.choice([1, 8, 16])
            lba = rnd.randrange(0, total - blocks)
            dev.sim.queue(rw10(True, lba, blocks),
                          data_out=bytes([rnd.randrange(1, 256)]) * (blocks * BLOCK))
        handler.serve()
        dev.sim.reap()


if __name__ == "__main__":
    main()
