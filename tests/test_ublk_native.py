"""The ublk server's native decoding, its fuzz harness under sanitizers, and the refusals
``tcmu-pr ublk add`` makes before any device exists.

The queue loop itself needs ublk_drv: tests/vm/test_ublk.py runs it on the real kernel.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
from ring_support import libasan

from tcmu_pr import cli
from tcmu_pr.ublk.native import load

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def decode(op: int, sector: int, nr: int, *, size: int = MiB, lbs: int = 512,
           buf: int = 64 << 10) -> tuple[int, tuple[int, int, int, int] | None]:  # fmt: skip
    mod = load()
    d = mod.ffi.new("struct ublk_io_desc *")
    d.op_flags, d.start_sector, d.nr_sectors = op, sector, nr
    out = mod.ffi.new("struct ublk_req *")
    rc = mod.lib.ublk_decode(d, size, lbs, buf, out)
    return rc, (None if rc else (out.be_op, out.need, out.off, out.len))


def test_decode_accepts_what_fits_and_names_the_verdict_bit():
    lib = load().lib
    assert decode(lib.UBLK_OP_READ, 0, 8) == (0, (lib.UBLK_BE_READ, 1, 0, 4096))
    assert decode(lib.UBLK_OP_WRITE, 2047, 1) == (0, (lib.UBLK_BE_WRITE, 2, 2047 * 512, 512))
    assert decode(lib.UBLK_OP_DISCARD, 0, 2048)[1] == (lib.UBLK_BE_DISCARD, 2, 0, MiB)
    assert decode(lib.UBLK_OP_WRITE_ZEROES, 8, 8)[1] == (lib.UBLK_BE_WRITE_ZEROES, 2, 4096, 4096)
    assert decode(lib.UBLK_OP_FLUSH, 0, 0)[1][:2] == (lib.UBLK_BE_FLUSH, 2)


@pytest.mark.parametrize(
    ("op", "sector", "nr", "kwargs", "code"),
    [
        (0, 2048, 1, {}, errno.ERANGE),  # the first sector past the end
        (1, 2047, 2, {}, errno.ERANGE),  # runs past the end
        (0, (1 << 64) - 1, 1, {}, errno.EINVAL),  # sector * 512 overflows
        (0, 2040, 0xFFFFFFFF, {}, errno.ERANGE),
        (0, 0, 0, {}, errno.EINVAL),  # empty
        (0, 0, 256, {}, errno.EINVAL),  # over the tag buffer (64 KiB)
        (1, 1, 8, {"lbs": 4096}, errno.EINVAL),  # misaligned for 4 KiB blocks
        (4, 0, 1, {}, errno.EOPNOTSUPP),  # WRITE_SAME: never advertised
        (0x2A, 0, 1, {}, errno.EOPNOTSUPP),
        (0, 0, 1, {"lbs": 3000}, errno.EINVAL),
    ],
)
def test_decode_refuses(op, sector, nr, kwargs, code):
    assert decode(op, sector, nr, **kwargs) == (-code, None)


def test_drain_waits_for_what_was_admitted_before_the_publish():
    mod = load()
    sh = mod.ffi.new("struct ublk_shared *")
    assert mod.lib.ublk_shared_init(sh, 1, 4) == 0
    try:
        assert mod.lib.ublk_drained(sh) == 1
        sh.tag_seq[2] = 1  # tag 2 admitted as the first I/O ...
        sh.admitted[0] = 1
        mod.lib.ublk_publish(sh, 3, 0)
        assert sh.verdict == 3
        assert mod.lib.ublk_drained(sh) == 0  # ... before the publish: it must finish
        sh.tag_seq[1] = 2  # admitted after the publish: saw the new verdict
        sh.admitted[0] = 2
        sh.tag_seq[2] = 0
        assert mod.lib.ublk_drained(sh) == 1
    finally:
        mod.lib.ublk_shared_free(sh)


@pytest.mark.slow
def test_fuzz_harness_under_asan_and_ubsan(tmp_path):
    libasan()  # fail, never skip, without the sanitizer runtime
    exe = tmp_path / "fuzz_ublk"
    subprocess.run(
        ["gcc", "-std=gnu11", "-O1", "-g", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-DUBLK_FUZZ_MAIN", f"-I{ROOT / 'native'}",
         str(ROOT / "native" / "fuzz_ublk.c"), str(ROOT / "native" / "ublk.c"),
         str(ROOT / "native" / "cbt.c"),
         "-luring", "-lpthread", "-o", str(exe)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    edge = (MiB).to_bytes(8, "little") + bytes([0, 15, 1])
    edge += (0).to_bytes(4, "little") + (1).to_bytes(4, "little") + (2047).to_bytes(8, "little")
    edge += bytes(8)
    (tmp_path / "edge").write_bytes(edge)
    out = subprocess.run([str(exe), "100000", "3", str(tmp_path / "edge")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok 100000"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--depth", "5000"], "the kernel's limit is 1..4096"),
        (["--depth", "0"], "the kernel's limit"),
        (["--queues", "0"], "--queues 0"),
        (["--block-size", "3000"], "--block-size 3000"),
        (["--nexus", "nonsense"], "not an I_T nexus"),
    ],
)
def test_add_refuses_bad_parameters_before_any_device(tmp_path, capsys, argv, message):
    image = tmp_path / "lu.img"
    image.write_bytes(bytes(MiB))
    assert cli.main(["ublk", "add", "--store", f"file:{image}", *argv]) == 2
    assert message in capsys.readouterr().err


def test_add_refuses_an_empty_or_unknown_store(tmp_path, capsys):
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    assert cli.main(["ublk", "add", "--store", f"file:{empty}"]) == 2
    assert "0 bytes: too small" in capsys.readouterr().err
    assert cli.main(["ublk", "add", "--store", f"file:{tmp_path}/missing.img"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["ublk", "add", "--store", "nfs:server/x"]) == 2
    assert "unknown store type 'nfs'" in capsys.readouterr().err


def pr_out(sa: int, rtype: int, key: int = 0, sark: int = 0) -> tuple[bytes, bytes]:
    cdb = bytes([0x5F, sa, rtype, 0, 0, 0, 0, 0, 24, 0])
    return cdb, key.to_bytes(8, "big") + sark.to_bytes(8, "big") + bytes(8)


def test_a_change_made_elsewhere_reaches_the_device_verdict_before_its_good(tmp_path):
    """The ublk server's verdict word is a LU member like a TCMU ring: another process's
    PR OUT announces, the server's LU re-reads and republishes before it acknowledges."""
    from tcmu_pr.backends import open_store
    from tcmu_pr.backends.store_spec import StoreSpec
    from tcmu_pr.pr.nexus import Nexus
    from tcmu_pr.ublk.server import Verdict, default_nexus
    from tcmu_pr.unit.lu import LogicalUnit

    image = tmp_path / "lu.img"
    image.write_bytes(bytes(MiB))
    spec = StoreSpec.file(image)
    server_store, changer_store = open_store(spec), open_store(spec)
    lu = LogicalUnit(server_store)
    verdict = Verdict(load(), 7, 2, 4, default_nexus())
    lu.add(verdict)
    other = Nexus.make("iqn.2026-12.example:host2", "iqn.2026-12.example:tgt", isid=1)
    changer = LogicalUnit(changer_store, serve=False)
    try:
        assert verdict.shared.verdict == 3  # no reservation: read and write
        for cdb, data in (pr_out(0, 0, sark=0xAB), pr_out(1, 1, key=0xAB)):
            assert changer.execute(other, cdb, data).status == 0
        assert verdict.shared.verdict == 1  # WRITE EXCLUSIVE by another nexus: read only
        assert changer.last_confirmation is not None and changer.last_confirmation.ok
        # the device's own nexus takes it over: PREEMPT needs a registration first
        mine = default_nexus()
        assert lu.execute(mine, *pr_out(0, 0, sark=0xCD)).status == 0
        assert lu.execute(mine, *pr_out(4, 1, key=0xCD, sark=0xAB)).status == 0
        assert verdict.shared.verdict == 3
        assert str(mine).startswith("ublk:") and ",i,0x0,ublk:" in str(mine)
    finally:
        changer.close()
        lu.close()
        mod = load()
        mod.lib.ublk_shared_free(verdict.shared)
        changer_store.close()
        server_store.close()
