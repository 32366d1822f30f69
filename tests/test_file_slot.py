"""The file PR slot: compare-and-swap semantics, atomic replacement, clear errors."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tcmu_pr.backends import open_store
from tcmu_pr.backends.base import StoreError
from tcmu_pr.backends.file import FileSlot, sidecar_path
from tcmu_pr.backends.file_store import FileStore
from tcmu_pr.backends.store_spec import StoreSpec


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "lu0.img"
    img.write_bytes(b"\0" * 4096)
    return img


def test_absent_sidecar_reads_empty(image: Path) -> None:
    with FileSlot(image) as slot:
        assert slot.read() == b""
    assert not sidecar_path(image).exists()


def test_cas_stores_when_expected_matches(image: Path) -> None:
    with FileSlot(image) as slot:
        assert slot.compare_and_swap(b"", b"one\0")
        assert slot.read() == b"one\0"
        assert slot.compare_and_swap(b"one\0", b"two\0")
        assert sidecar_path(image).read_bytes() == b"two\0"


def test_cas_refuses_stale_expected_and_changes_nothing(image: Path) -> None:
    with FileSlot(image) as slot:
        assert slot.compare_and_swap(b"", b"one\0")
        before = os.stat(sidecar_path(image)).st_ino
        assert not slot.compare_and_swap(b"", b"two\0")
        assert not slot.compare_and_swap(b"one", b"two\0")  # a prefix is not equal
        assert slot.read() == b"one\0"
        assert os.stat(sidecar_path(image)).st_ino == before


def test_second_slot_sees_first_slots_write(image: Path) -> None:
    with FileSlot(image) as a, FileSlot(image) as b:
        assert a.compare_and_swap(b"", b"x\0")
        assert not b.compare_and_swap(b"", b"y\0")
        assert b.compare_and_swap(b.read(), b"y\0")
        assert a.read() == b"y\0"


def test_no_temporaries_left_behind(image: Path) -> None:
    with FileSlot(image) as slot:
        for i in range(5):
            assert slot.compare_and_swap(slot.read(), f"{i}\0".encode())
    names = sorted(p.name for p in image.parent.iterdir())
    assert names == ["lu0.img", "lu0.img.tcmu-pr", "lu0.img.tcmu-pr.lock"]
    assert (os.stat(sidecar_path(image)).st_mode & 0o777) == 0o644


def test_large_blob_round_trips(image: Path) -> None:
    blob = os.urandom(3 * 1024 * 1024) + b"\0"  # v2 blobs reach MiBs; an xattr could not
    with FileSlot(image) as slot:
        assert slot.compare_and_swap(b"", blob)
        assert slot.read() == blob


def test_missing_image_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        FileSlot(tmp_path / "nope.img")
    with pytest.raises(StoreError, match="does not exist"):
        FileSlot(tmp_path / "no-such-dir" / "lu.img")
    with pytest.raises(StoreError):
        FileSlot(tmp_path)  # a directory is not an image


def test_image_removed_after_open(image: Path) -> None:
    slot = FileSlot(image)
    image.unlink()
    with pytest.raises(StoreError, match="disappeared"):
        slot.read()
    with pytest.raises(StoreError, match="disappeared"):
        slot.compare_and_swap(b"", b"x\0")
    slot.close()


def test_unwritable_sidecar_location_is_a_store_error(image: Path) -> None:
    # A directory squatting on the sidecar's name: reading and renaming over it both fail.
    sidecar_path(image).mkdir()
    with FileSlot(image) as slot:
        with pytest.raises(StoreError, match="cannot read"):
            slot.read()
        with pytest.raises(StoreError, match="cannot write"):
            slot._replace(b"x\0")  # the write path itself, past the compare that fails first
    assert sorted(p.name for p in image.parent.iterdir() if p.name.startswith(".")) == []


def test_unopenable_lock_file_is_a_store_error(image: Path) -> None:
    Path(f"{image}.tcmu-pr.lock").mkdir()
    with pytest.raises(StoreError, match="lock file"):
        FileSlot(image)


def test_lock_file_removed_while_open_is_recreated(image: Path) -> None:
    with FileSlot(image) as slot:
        Path(f"{image}.tcmu-pr.lock").unlink()
        assert slot.compare_and_swap(b"", b"x\0")
        assert Path(f"{image}.tcmu-pr.lock").exists()
        with FileSlot(image) as other:
            assert other.compare_and_swap(b"x\0", b"y\0")


def test_closed_slot_refuses_cas(image: Path) -> None:
    slot = FileSlot(image)
    slot.close()
    slot.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        slot.compare_and_swap(b"", b"x\0")


def test_the_benchmarks_unguarded_control_overwrites_blindly(image: Path) -> None:
    from tcmu_pr.tools.bench_store import Unguarded

    with FileSlot(image) as slot, FileSlot(image) as other:
        blind = Unguarded(other)
        assert slot.compare_and_swap(b"", b"one\0")
        assert blind.compare_and_swap(b"stale", b"two\0")
        assert slot.read() == b"two\0"


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_is_a_store_error_and_keeps_the_old_blob(tiny_fs: Path) -> None:
    img = tiny_fs / "lu.img"
    img.write_bytes(b"")
    with FileSlot(img) as slot:
        assert slot.compare_and_swap(b"", b"old\0")
        with pytest.raises(StoreError) as info:
            slot.compare_and_swap(b"old\0", b"x" * (256 * 1024))
        assert info.value.errno == errno.ENOSPC
        assert "No space left" in str(info.value)
        assert slot.read() == b"old\0"
    assert sorted(p.name for p in tiny_fs.iterdir()) == [
        "lu.img",
        "lu.img.tcmu-pr",
        "lu.img.tcmu-pr.lock",
    ]


def _reader(image: str, blobs: tuple[bytes, bytes], rounds: int, out: mp.Queue) -> None:
    slot = FileSlot(image)
    torn = 0
    for _ in range(rounds):
        got = slot.read()
        if got not in (b"", *blobs):
            torn += 1
    out.put(torn)


def test_readers_never_see_a_torn_blob(image: Path) -> None:
    """Rename atomicity: a lock-free reader sees the old or the new blob, never a mix."""
    blobs = (b"A" * 200_000 + b"\0", b"B" * 300_000 + b"\0")
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    reader = ctx.Process(target=_reader, args=(str(image), blobs, 400, out))
    reader.start()
    with FileSlot(image) as slot:
        cur = b""
        for i in range(60):
            new = blobs[i % 2]
            assert slot.compare_and_swap(cur, new)
            cur = new
    torn = out.get(timeout=60)
    reader.join(timeout=10)
    assert torn == 0


def test_open_store_file_gives_the_sidecar_slot(image: Path) -> None:
    store = open_store(StoreSpec.file(image))
    try:
        assert isinstance(store, FileStore)
        slot = store.slot()
        assert isinstance(slot, FileSlot) and slot is store.slot()  # one slot per store
        assert slot.read() == b""
    finally:
        store.close()


def test_open_store_of_a_missing_image_is_a_clear_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(StoreSpec.file(tmp_path / "nope.img"))
    assert not list(tmp_path.iterdir()), "nothing created beside a missing image"


def test_rbd_without_its_module_is_a_clear_store_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tcmu_pr.backends.rbd_store", None)  # as if not installed
    with pytest.raises(StoreError, match="RBD support is unavailable"):
        open_store(StoreSpec.parse("rbd:rbd/disk1"))
