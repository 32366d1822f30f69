"""The RBD PR slot on a real cluster: where the blob lives, CAS semantics, SUSE v1 interop."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from conftest import rbd_store

from tcmu_pr import scsi
from tcmu_pr.backends import open_store
from tcmu_pr.backends.base import StoreError, StoreOptions
from tcmu_pr.backends.rbd import MAX_BLOB, PR_XATTR, RbdPRSlot
from tcmu_pr.backends.rbd_store import RbdStore
from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.engine.pr_cdb import READ_KEYS, REGISTER, parse_read_keys, pr_in, pr_out
from tcmu_pr.pr import codec
from tcmu_pr.pr.nexus import Nexus

pytestmark = pytest.mark.ceph

INIT1 = "iqn.1994-05.com.redhat:client1"
GW = "iqn.2003-01.org.linux-iscsi.gw:rbd"

# Written by hand in SUSE target_core_rbd's v1 layout, NUL-terminated, as a v1 gateway stores
# it: one initiator registered through two target ports, holding a type 5 reservation.
SUSE_V1_BLOB = (
    b"0x00000001\n"
    b"0x00000007\n"
    b"No SPC-2 Reservation holder\n"
    b"0x00000003\n"
    b"0x0000000000abc123 " + INIT1.encode() + b",i,0x23d000001," + GW.encode() + b",t,0x1"
    b" 0x00000005\n"
    b"0x00000002\n"
    b"0x0000000000abc123 " + INIT1.encode() + b",i,0x23d000001," + GW.encode() + b",t,0x1\n"
    b"0x0000000000abc123 " + INIT1.encode() + b",i,0x23d000001," + GW.encode() + b",t,0x2\n"
    b"\0"
)


@pytest.fixture
def slot(ceph_conf: str, rbd_image: str) -> Any:
    store = rbd_store(ceph_conf, rbd_image)
    yield store.slot()
    store.close()


def test_blob_lives_on_the_header_object_named_by_python_rbd(
    slot: RbdPRSlot, rados_ioctx: Any, header_oid: str
) -> None:
    assert slot.oid == header_oid
    assert slot.read() == b""  # never written
    assert slot.compare_and_swap(b"", b"first\0")
    # Cross-check with Debian's binding: the xattr SUSE's gateway reads.
    assert rados_ioctx.get_xattr(header_oid, PR_XATTR) == b"first\0"


def test_cas_refuses_stale_expected_and_writes_nothing(slot: RbdPRSlot) -> None:
    assert slot.compare_and_swap(b"", b"one\0")
    assert not slot.compare_and_swap(b"", b"two\0")
    assert not slot.compare_and_swap(b"one", b"two\0")  # a prefix is not equal
    assert not slot.compare_and_swap(b"one\0\0", b"two\0")
    assert slot.read() == b"one\0"
    assert slot.compare_and_swap(b"one\0", b"two\0")
    assert slot.read() == b"two\0"


def test_two_connections_interlock(ceph_conf: str, rbd_image: str, slot: RbdPRSlot) -> None:
    store = rbd_store(ceph_conf, rbd_image)
    try:
        other = store.slot()
        seen = other.read()
        assert slot.compare_and_swap(seen, b"mine\0")
        assert not other.compare_and_swap(seen, b"theirs\0")
        assert other.read() == b"mine\0"
    finally:
        store.close()


def test_missing_image_and_removed_header_are_store_errors(
    ceph_conf: str, slot: RbdPRSlot, rados_ioctx: Any
) -> None:
    with pytest.raises(StoreError) as err:
        rbd_store(ceph_conf, "no-such-image")
    assert err.value.errno == errno.ENOENT
    with pytest.raises(StoreError):
        RbdStore(StoreSpec("rbd", pool="no-such-pool", image="x"),
                 StoreOptions(ceph_conf=ceph_conf))  # fmt: skip
    # The guard asserts the header exists: a CAS never creates a stray object.
    slot.oid = "rbd_header.doesnotexist"
    with pytest.raises(StoreError) as err:
        slot.compare_and_swap(b"", b"x\0")
    assert err.value.errno == errno.ENOENT
    with pytest.raises(Exception):  # noqa: B017 - python-rados raises its own ObjectNotFound
        rados_ioctx.stat("rbd_header.doesnotexist")


def test_oversized_blob_is_refused_before_writing(slot: RbdPRSlot) -> None:
    with pytest.raises(StoreError) as err:
        slot.compare_and_swap(b"", b"x" * (MAX_BLOB + 1))
    assert err.value.errno == errno.EFBIG
    assert slot.read() == b""


def test_large_blob_round_trips(slot: RbdPRSlot) -> None:
    big = b"y" * (300 * 1024) + b"\0"  # beyond the first read buffer: grows and retries
    assert slot.compare_and_swap(b"", big)
    assert slot.read() == big


def test_open_store_names_the_header_xattr(ceph_conf: str, rbd_image: str) -> None:
    a = open_store(StoreSpec.parse(f"rbd:rbd/{rbd_image}"), StoreOptions(ceph_conf=ceph_conf))
    b = open_store(StoreSpec.parse(f"rbd/rbd/{rbd_image}"), StoreOptions(ceph_conf=ceph_conf))
    try:
        assert isinstance(a, RbdStore) and isinstance(a.slot(), RbdPRSlot)
        assert a.slot() is a.slot()  # one slot per store
        assert a.slot().oid == b.slot().oid
        assert a.cluster.gid != b.cluster.gid  # one RADOS client per store
        assert a.slot().compare_and_swap(b"", b"z\0")
        assert b.slot().read() == b"z\0"
    finally:
        a.close()
        b.close()


def test_hand_written_suse_v1_blob_is_read_and_updated(
    slot: RbdPRSlot, rados_ioctx: Any, header_oid: str
) -> None:
    from tcmu_pr.unit.apply import apply

    rados_ioctx.set_xattr(header_oid, PR_XATTR, SUSE_V1_BLOB)
    state = codec.decode(slot.read())
    assert state.seq == 7 and state.generation == 3
    assert len(state.registrations) == 2
    assert state.reservation is not None and state.reservation.type == 5

    newcomer = Nexus.make("iqn.1994-05.com.redhat:client2", GW, isid=0x23D000002, tpgt=1)
    cdb, params = pr_out(REGISTER, sa_key=0xFEED)
    outcome = apply(slot, newcomer, cdb, params)
    assert outcome.status == scsi.GOOD, outcome

    after = codec.decode(rados_ioctx.get_xattr(header_oid, PR_XATTR))
    assert after.seq == 8
    assert after.registrations[:2] == state.registrations  # the v1 registrations are kept
    assert after.registration_of(newcomer) is not None
    assert after.reservation == state.reservation
    keys = apply(slot, newcomer, pr_in(READ_KEYS))
    generation, listed = parse_read_keys(keys.data or b"")
    assert sorted(listed) == sorted([0xABC123, 0xABC123, 0xFEED])
    assert generation == after.generation
