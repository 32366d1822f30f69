"""The C loop under AddressSanitizer + UndefinedBehaviorSanitizer.

The cffi module is rebuilt with ``-fsanitize=address,undefined -fno-sanitize-recover=all``
into a temporary directory and driven in a child Python with libasan preloaded.  The
"shared memory" is a heap bytearray there (RingSimulator(heap=True)), so ASan knows its
exact bounds: any read or write outside the mapping, or outside a stack buffer, aborts the
child.  The child runs the normal workloads, every malformed-entry case, and a fuzz loop
that scribbles random bytes over queued entries before each batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ring_support import libasan

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    r"""
    import ctypes, os, random, struct, sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import _ring_native_asan as mod
    from tcmu_pr.ring import layout as L
    from tcmu_pr.ring.loop import RingError
    from tcmu_pr.ring.native import NativeRing
    from tcmu_pr.ring.simulator import RingSimulator, RingFull, encode_cmd_entry

    assert hasattr(ctypes.CDLL(None), "__asan_report_load1"), "ASan runtime not loaded"
    fd = os.open(sys.argv[3], os.O_RDWR)
    SIZE, BLOCK = 1 << 20, 512
    rnd = random.Random(int(sys.argv[4]))
    served = errors = 0

    # VERIFY, WRITE AND VERIFY, ORWRITE, COMPARE AND WRITE, WRITE SAME, UNMAP,
    # GET LBA STATUS, SYNCHRONIZE CACHE, REPORT SUPPORTED OPERATION CODES
    SBC = (0x2F, 0x8F, 0x2E, 0x8E, 0x8B, 0x89, 0x41, 0x93, 0x42, 0x9E, 0x35, 0x91, 0xA3)

    def rw(write, lba, n):
        return struct.pack(">BBIBHB", 0x2A if write else 0x28, 0, lba, 0, n, 0)

    class Cbt:  # what NativeRing.track needs of a map: its cffi module and struct
        ffi = mod.ffi

    def cbt_map(cap, bs, count, length):
        # a change-block map in a heap buffer of exactly `length` bytes (ASan's bounds),
        # its header possibly lying; attached when the C side accepts it
        buf = bytearray(length)
        if length >= 32:
            buf[0:8] = b"TCMUCBT1"
            struct.pack_into("<IIQQ", buf, 8, 1, bs, cap, count)
        c = mod.ffi.new("struct cbt_map *")
        keep = mod.ffi.from_buffer(buf)
        rc = mod.lib.tcmu_cbt_attach(c, keep, length)
        return (c, keep, buf) if rc == 0 else None

    tracked = 0
    for it in range(int(sys.argv[5])):
        sim = RingSimulator(cmdr_size=4096, data_size=64 * 1024, heap=True)
        ring = NativeRing(sim.mm, sim.kick_fd, fd, SIZE, BLOCK, module=mod,
                          deferred=rnd.random() < 0.5, max_transfer=rnd.choice((0, 2, 8)),
                          write_through=rnd.random() < 0.3)
        bs = rnd.choice((4096, 65536, 3000, 0, 1 << 21))
        count = rnd.choice((SIZE // 4096, SIZE // 65536, 1, 0, 1 << 40, rnd.getrandbits(64)))
        cap = rnd.choice((SIZE, SIZE - 1, 0, rnd.getrandbits(64)))
        length = rnd.choice((4096 * 3, 4096 + 256, 4096 * 2, 100, 0)) + rnd.choice((0, 1, 7))
        if rnd.random() < 0.5:  # a coherent map, exactly as long as it must be
            bs, cap, count, length = 4096, SIZE, SIZE // 4096, 3 * 4096  # page-rounded arrays
        got = cbt_map(cap, bs, count, length)
        if got is not None:  # the ring marks writes in it; the header may change under it
            cbt = Cbt()
            cbt.c = got[0]
            ring.track(cbt)
            tracked += 1
            if rnd.random() < 0.3:
                struct.pack_into("<QQ", got[2], 16, rnd.getrandbits(64), rnd.getrandbits(64))
            if rnd.random() < 0.3:
                struct.pack_into("<I", got[2], 76, 1)  # freeze: writes punted
            mod.lib.tcmu_cbt_mark(got[0], rnd.getrandbits(64), rnd.getrandbits(64))
        ring.verdict = rnd.choice((0, 1, 2, 3, 7))
        try:
            for _ in range(rnd.randint(1, 12)):
                n = rnd.randint(1, 8)
                w = rnd.random() < 0.5
                split = None if rnd.random() < 0.5 else [BLOCK // 2] * (2 * n)
                sim.queue(rw(w, rnd.randrange(SIZE // BLOCK + 8), n), split=split,
                          data_out=rnd.randbytes(n * BLOCK) if w else b"",
                          data_in=0 if w else n * BLOCK)
                if rnd.random() < 0.2:
                    sim.queue(bytes([rnd.choice((0x12, 0x5F, 0x7F, 0xC0))]) + bytes(15))
                if rnd.random() < 0.2:  # what the emulation answers: punted whole
                    sim.queue(bytes([rnd.choice(SBC)]) + rnd.randbytes(15),
                              data_out=rnd.randbytes(rnd.choice((0, BLOCK))))
                if rnd.random() < 0.2:  # a bit outside the usage data: punted
                    cdb = bytearray(rw(w, rnd.randrange(SIZE // BLOCK), n))
                    cdb[rnd.randrange(1, 10)] |= 1 << rnd.randrange(8)
                    sim.queue(bytes(cdb), data_in=n * BLOCK)
        except RingFull:
            pass
        # scribble: random bytes at random places of the queued region and the mailbox
        for _ in range(rnd.randint(0, 6)):
            where = rnd.choice((sim.cmdr_off + rnd.randrange(sim.cmdr_size), L.MB_CMD_HEAD))
            val = rnd.choice((0, 1, 7, 8, 0xFF, 0xFFFFFFFF, sim.map_size - 1, sim.map_size,
                              sim.data_off, rnd.getrandbits(32)))
            L.U32.pack_into(sim.mm, where - where % 4, val & 0xFFFFFFFF)
        for _ in range(4):
            try:
                punts = (ring.process() if rnd.random() < 0.5
                         else ring.run(sim.notify_fd, sim.event_size, rnd.choice((0, 1))))
            except RingError:
                errors += 1
                break
            if not punts:
                break
            for p in punts:
                try:
                    ring.cdb(p); ring.data_out(p)
                except RingError:
                    pass
                ring.complete(p, 0, rnd.randbytes(rnd.randint(0, 200)),
                              rnd.choice((None, b"", rnd.randbytes(rnd.randint(1, 9000)))))
            ring.commit()
        served += ring.stats()["cmds"]
        ring.close()
        sim.close()
    print("ok", served, errors, tracked)
    """
)


@pytest.mark.slow
def test_native_loop_under_asan_and_ubsan(tmp_path):
    sys.path.insert(0, str(ROOT / "native"))
    try:
        import build_ring
    finally:
        sys.path.pop(0)
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
             "-g", "-O1"]  # fmt: skip
    builder = build_ring.make_builder(
        "_ring_native_asan", flags, ["-fsanitize=address,undefined"], absolute=True
    )
    builder.compile(tmpdir=str(tmp_path / "build"))
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, LD_PRELOAD=libasan(), ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, script, str(tmp_path / "build"), str(ROOT), str(image), "1", "300"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr
    ok, served, errors, tracked = proc.stdout.split()
    assert ok == "ok" and int(served) > 300 and int(errors) > 0 and int(tracked) > 10
