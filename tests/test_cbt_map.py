"""The map file beside the image: enable/disable/info/map/diff, the Python write paths, the
C side's distrust of the header, and the crash rule (dirty flag + boot id)."""

from __future__ import annotations

import json
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcmu_pr import _ring_native as native
from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.cbt import layout, mapfile
from tcmu_pr.cbt.mapfile import CbtError, CbtMap
from tcmu_pr.cli import main
from tcmu_pr.emulation import DeviceInfo, Emulator

SIZE = 4 << 20
BS = 4096


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lu.img"
    path.write_bytes(b"")
    os.truncate(path, SIZE)
    return str(path)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().out


def test_layout_offsets_are_the_c_ones():
    lib = native.lib
    assert (lib.CBT_HEADER_SIZE, lib.CBT_OFF_NUMBER, lib.CBT_OFF_INFLIGHT, lib.CBT_OFF_FREEZE,
            lib.CBT_OFF_COW) == (layout.HEADER_SIZE, layout.OFF_NUMBER, layout.OFF_INFLIGHT,
                                 layout.OFF_FREEZE, layout.OFF_COW)  # fmt: skip
    for n in (0, 1, 4095, 4096, 4097, 1 << 21):
        assert lib.tcmu_cbt_file_size(n) == layout.file_size(n)


def test_enable_info_map_diff_disable(image, capsys):
    rc, out = cli(capsys, "cbt", "enable", "--store", f"file:{image}")
    assert rc == 0
    info = json.loads(out)
    assert info["block_size"] == 65536 and info["block_count"] == SIZE // 65536
    rc, out = cli(capsys, "cbt", "info", "--store", f"file:{image}")
    got = json.loads(out)
    assert list(got) == ["device_capacity", "block_size", "block_count", "generation_id",
                         "changes_number"]  # fmt: skip
    assert got == info | {"changes_number": 1} and got["device_capacity"] == SIZE
    with CbtMap.open(image) as m, FileDataBackend(image, cbt=m) as data:
        data.write(65536 * 3 + 10, b"x" * 65536)  # blocks 3 and 4
        data.write(SIZE - 1, b"y")  # the last block
    rc, out = cli(capsys, "cbt", "map", "--json", "--store", f"file:{image}")
    expected = [0] * 64
    expected[3] = expected[4] = expected[63] = 1
    assert json.loads(out) == expected
    rc, out = cli(capsys, "cbt", "diff", "--since", "0", "--store", f"file:{image}")
    assert out.split("\n")[:2] == [f"{3 * 65536} {2 * 65536}", f"{63 * 65536} 65536"]
    rc, out = cli(capsys, "cbt", "diff", "--since", "1", "--json", "--store", f"file:{image}")
    assert json.loads(out) == []
    assert cli(capsys, "cbt", "disable", "--store", f"file:{image}")[0] == 0
    assert not os.path.exists(image + ".cbt")
    assert cli(capsys, "cbt", "info", "--store", f"file:{image}")[0] == 1


def test_raw_map_is_one_byte_per_block(image, capfdbinary):
    assert main(["cbt", "enable", "--block-size", "4096", "--store", f"file:{image}"]) == 0
    with CbtMap.open(image) as m, FileDataBackend(image, cbt=m) as data:
        data.write(4096 * 7, b"z")
    capfdbinary.readouterr()
    assert main(["cbt", "map", "--store", f"file:{image}"]) == 0
    raw = capfdbinary.readouterr().out
    assert len(raw) == SIZE // 4096 and raw[7] == 1 and raw.count(0) == len(raw) - 1


@pytest.mark.parametrize(
    ("argv", "rc"),
    [
        (["cbt", "enable", "--block-size", "3000"], 2),
        (["cbt", "enable", "--block-size", str(2 << 20)], 2),
        (["cbt", "info"], 1),  # not enabled
        (["cbt", "disable"], 1),
        (["cbt", "diff", "--since", "256"], 2),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(image, capsys, argv, rc):
    assert main([*argv, "--store", f"file:{image}"]) == rc
    assert not os.path.exists(image + ".cbt")


def test_enable_twice_and_rbd_and_missing_image(image, capsys, tmp_path):
    assert main(["cbt", "enable", "--store", f"file:{image}"]) == 0
    before = _read(image + ".cbt")
    assert main(["cbt", "enable", "--store", f"file:{image}"]) == 1
    assert _read(image + ".cbt") == before
    assert main(["cbt", "info", "--store", "rbd:pool/img"]) == 2
    assert main(["cbt", "info", "--store", f"file:{tmp_path}/nothing"]) == 2


def test_disable_refused_while_a_server_has_it_open(image):
    mapfile.enable(image)
    with CbtMap.open(image), pytest.raises(CbtError, match="open with tracking"):
        mapfile.disable(image)
    mapfile.disable(image)


def test_every_python_write_class_marks_its_blocks(image):
    """WRITE, WRITE SAME, UNMAP, COMPARE AND WRITE, ORWRITE through the emulation."""
    mapfile.enable(image, 4096)
    with CbtMap.open(image) as m, FileDataBackend(image, cbt=m) as data:
        emu = Emulator(DeviceInfo.from_size("cbt", SIZE, block_size=512), data)

        def blocks_now() -> set[int]:
            return {i for i, v in enumerate(m.map_bytes()) if v}

        cdbs = [
            (struct.pack(">BBIBHB", 0x2A, 0, 8, 0, 1, 0), b"a" * 512, {1}),  # WRITE(10)
            (struct.pack(">BBQIBB", 0x93, 0, 80, 24, 0, 0), b"b" * 512, {10, 11, 12}),  # WS16
            (struct.pack(">BBQIBB", 0x93, 0x08, 200, 8, 0, 0), bytes(512), {25}),  # WS16 UNMAP
            (struct.pack(">BBIBHB", 0x42, 0, 0, 0, 24, 0),  # UNMAP: one descriptor
             struct.pack(">HH4xQI4x", 22, 16, 400, 8), {50}),
            (struct.pack(">BBQ3xBBB", 0x89, 0, 640, 1, 0, 0), bytes(512) + b"c" * 512, {80}),
            (struct.pack(">BBQIBB", 0x8B, 0, 800, 1, 0, 0), b"d" * 512, {100}),  # ORWRITE16
        ]  # fmt: skip
        seen: set[int] = set()
        for cdb, data_out, expect in cdbs:
            status, sense, _ = emu.emulate(cdb, data_out)
            assert status == 0, (cdb.hex(), sense)
            now = blocks_now()
            assert now - seen == expect, cdb.hex()
            seen = now


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, 200_000)), max_size=40))
def test_random_writes_leave_no_block_unmarked(tmp_path_factory, writes):
    image = str(tmp_path_factory.mktemp("w") / "lu.img")
    with open(image, "wb") as f:
        f.truncate(SIZE)
    mapfile.enable(image, 4096)
    record: set[int] = set()  # independent: every byte's block, computed here
    with CbtMap.open(image) as m, FileDataBackend(image, cbt=m) as data:
        for off, length in writes:
            length = min(length, SIZE - off)
            data.write(off, os.urandom(length))
            record.update(range(off // 4096, (off + length - 1) // 4096 + 1))
        marked = {i for i, v in enumerate(m.map_bytes()) if v}
    assert marked == record


def _corrupt(image: str, off: int, fmt: str, value: int) -> None:
    with open(image + ".cbt", "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


@pytest.mark.parametrize(
    ("off", "fmt", "value"),
    [(12, "<I", 3000), (12, "<I", 1 << 21), (12, "<I", 2048), (24, "<Q", 1 << 40),
     (24, "<Q", 1), (16, "<Q", 1 << 50), (8, "<I", 2), (0, "<Q", 0)],
)  # fmt: skip
def test_corrupt_headers_are_refused_by_both_sides(image, off, fmt, value):
    mapfile.enable(image, 4096)
    _corrupt(image, off, fmt, value)
    with pytest.raises(CbtError):
        CbtMap.open(image)
    raw = bytearray(_read(image + ".cbt"))
    c = native.ffi.new("struct cbt_map *")
    assert native.lib.tcmu_cbt_attach(c, native.ffi.from_buffer(raw), len(raw)) != 0


_U32S = st.one_of(st.sampled_from([0, 1, 4096, 8192, 65536, 1 << 20, 1 << 21, 3 << 12]),
                  st.integers(0, (1 << 32) - 1))
_U64S = st.one_of(st.integers(0, 1 << 16), st.integers(0, (1 << 64) - 1))


@given(_U32S, _U64S, _U64S, st.integers(1, 4), st.integers(0, 1 << 30), st.integers(0, 1 << 30))
def test_c_attach_never_trusts_more_than_the_mapping(bs, cap, count, pages, off, length):
    buf = bytearray(4096 * pages)
    buf[0:8] = layout.MAGIC
    struct.pack_into("<IIQQ", buf, 8, 1, bs, cap, count)
    c = native.ffi.new("struct cbt_map *")
    if native.lib.tcmu_cbt_attach(c, native.ffi.from_buffer(buf), len(buf)) == 0:
        assert layout.file_size(c.block_count) <= len(buf)
        assert c.block_count == -(-cap // bs)
        native.lib.tcmu_cbt_mark(c, off, length)  # clipped: never past the map
        assert not any(buf[4096 + layout.page_round(c.block_count) :])


def test_truncated_map_file_is_refused(image):
    mapfile.enable(image, 4096)
    os.truncate(image + ".cbt", 4096 + 100)
    with pytest.raises(CbtError):
        CbtMap.open(image)


def test_resized_image_is_refused(image):
    mapfile.enable(image, 4096)
    os.truncate(image, SIZE * 2)
    with pytest.raises(CbtError, match="changed size"):
        CbtMap.open(image)


def _header(image: str, off: int, fmt: str = "<I") -> int:
    with open(image + ".cbt", "rb") as f:
        return struct.unpack_from(fmt, f.read(4096), off)[0]


def test_clean_close_by_the_last_writer_clears_dirty(image):
    mapfile.enable(image, 4096)
    a = CbtMap.open(image)
    assert _header(image, layout.OFF_DIRTY) == 1
    b = CbtMap.open(image)
    assert not b.recovered
    a.close()
    assert _header(image, layout.OFF_DIRTY) == 1  # b still writes
    b.close()
    assert _header(image, layout.OFF_DIRTY) == 0


def test_unclean_stop_same_boot_keeps_the_generation(image):
    mapfile.enable(image, 4096)
    gen = CbtMap.open(image, writer=False).generation_id
    pid = os.fork()
    if pid == 0:  # a writer that dies without closing
        m = CbtMap.open(image)
        FileDataBackend(image, cbt=m).write(4096 * 9, b"q")
        os._exit(0)
    os.waitpid(pid, 0)
    with CbtMap.open(image) as m:
        assert m.recovered == "process-death"
        assert m.generation_id == gen and m.map_bytes()[9] == 1


def test_unclean_stop_on_another_boot_renews_the_generation(image):
    mapfile.enable(image, 4096)
    gen = CbtMap.open(image, writer=False).generation_id
    pid = os.fork()
    if pid == 0:  # a writer that dies without closing...
        m = CbtMap.open(image)
        FileDataBackend(image, cbt=m).write(4096 * 9, b"q")
        os._exit(0)
    os.waitpid(pid, 0)
    # ... on a host that then crashed: the next open sees another boot id
    with open(image + ".cbt", "r+b") as f:
        f.seek(layout.OFF_BOOT)
        f.write(bytes(16))
    with CbtMap.open(image) as again:
        assert again.recovered == "new-generation"
        assert again.generation_id != gen and again.map_bytes()[9] == 0
        assert again.number == 1


def test_random_wrap_starts_a_new_generation(image):
    mapfile.enable(image, 4096)
    with CbtMap.open(image) as m:
        gen = m.generation_id
        m.new_generation()
        assert m.generation_id != gen and m.number == 1


def test_enable_and_disable_are_refused_while_a_server_has_the_image(image):
    """A server that opened the image without a map would write untracked: enable waits
    for none to be open (FileDataBackend marks the image in use before it looks)."""
    with FileDataBackend(image):
        with pytest.raises(CbtError, match="open by a server"):
            mapfile.enable(image)
        assert not os.path.exists(image + ".cbt")
    mapfile.enable(image)
    with FileDataBackend(image), pytest.raises(CbtError, match="open by a server"):
        mapfile.disable(image)
    with FileDataBackend(image, read_only=True):  # a reader does not count
        mapfile.disable(image)
