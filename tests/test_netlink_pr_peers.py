"""Two gateways, each a kernel-playing PR peer with its own service, share one file store.

Each peer does what the TCMU PR series' kernel does for every PR OUT: GET_PR_INFO, run the
engine, SET_PR_INFO with seq + 1, and on -EAGAIN start over.  200 key-changing REGISTERs per
gateway must all land: a lost update would leave a stale key (the next REGISTER would then
conflict) and a wrong final seq.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest
from netlink_peer import PRPeer, running_service

from tcmu_pr import scsi
from tcmu_pr.pr import codec
from tcmu_pr.pr.nexus import Nexus

UPDATES = 200


def register(old_key: int, new_key: int) -> tuple[bytes, bytes]:
    """PERSISTENT RESERVE OUT / REGISTER with APTPL set (as sd and the PR series do)."""
    cdb = struct.pack(">BBB2xIB", scsi.PERSISTENT_RESERVE_OUT, 0x00, 0x00, 24, 0)
    params = struct.pack(">QQ4xBx2x", old_key, new_key, 0x01)
    return cdb, params


def gateway_nexus(tpgt: int) -> Nexus:
    return Nexus.make(
        "iqn.1994-05.com.redhat:client1",
        "iqn.2003-01.org.linux-iscsi.gw:lu",
        isid=0x23D000001,
        tpgt=tpgt,
    )


@pytest.mark.slow
def test_two_gateways_lose_no_update(tmp_path):
    image = tmp_path / "shared.img"
    image.write_bytes(bytes(4096))
    config = f"tcmu-pr/file:{image}"
    results: dict[int, PRPeer] = {}
    errors: list[BaseException] = []

    with running_service() as (kernel_a, _), running_service() as (kernel_b, _):
        assert kernel_a.add_device(1, config) == 0
        assert kernel_b.add_device(1, config) == 0
        start = threading.Barrier(2)

        def gateway(kernel, tpgt: int) -> None:
            try:
                peer = PRPeer(kernel, 1)
                results[tpgt] = peer
                nexus = gateway_nexus(tpgt)
                base = tpgt << 56
                start.wait()
                for i in range(UPDATES):
                    old = base + i if i else 0
                    out = peer.execute(nexus, *register(old, base + i + 1))
                    assert out.status == scsi.GOOD, (tpgt, i, out)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        began = time.monotonic()
        threads = [
            threading.Thread(target=gateway, args=(k, t)) for k, t in ((kernel_a, 1), (kernel_b, 2))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        elapsed = time.monotonic() - began
        assert not errors, errors

        status, text = kernel_a.get_pr_info(1)
        assert status == 0
        final = codec.decode(text.encode())

    assert final.seq == 2 * UPDATES  # every write landed exactly once
    assert final.generation == 2 * UPDATES
    keys = {reg.nexus.tpgt_value: reg.key for reg in final.registrations}
    assert keys == {1: (1 << 56) + UPDATES, 2: (2 << 56) + UPDATES}
    assert sum(p.writes for p in results.values()) == 2 * UPDATES
    retries = sum(p.retries for p in results.values())
    print(
        f"\n{2 * UPDATES} updates by 2 gateways in {elapsed:.2f} s "
        f"({2 * UPDATES / elapsed:.0f}/s), {retries} SETs refused and retried"
    )
