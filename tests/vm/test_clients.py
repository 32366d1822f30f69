"""Real initiator-side clients against ``tcmu-pr daemon`` on the loopback-mpath layout.

Four tcm_loop paths (each its own I_T nexus and TCMU device) on one LU, dm-multipath on top,
in the QEMU VM with Debian's 6.12 kernel.  Every client a cluster would use talks to it here:
sg_persist (every service action and reservation type, through tests/vm/scenarios/
sg-persist-full.sh, whose transcript is also compared with LIO's own PR emulation), the
block layer's IOC_PR_* ioctls on one path and on the multipath map, mpathpersist, fence_scsi
and fence_mpath, and fio with verification through the map.

Every client test runs twice in one booted VM: with the LU in an image file (``@file``) and
on an RBD image of the guest's own Ceph cluster (``@rbd``, the PR state in its header).  Each
test starts with an empty PR state: the scenario and the first client test on a fresh layout,
the later client tests on the same layout after a PR OUT CLEAR (``lu``), which saves a layout
set-up per test.
"""

from __future__ import annotations

import re
from pathlib import Path

import layouts
import pytest
import vmrig

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected"
SCENARIO = "bash /mnt/repo/tests/vm/scenarios/sg-persist-full.sh"
IOCTL = "python3 /mnt/repo/tests/vm/tools/pr_ioctl.py"
SIZE = 256 << 20  # loopback-mpath's default LU size, on either store
STORES = ("file", "rbd")
#: The module's runs in one boot: the per-nexus layout on each store, then ``nexus``: the
#: ``ours-nexus`` backend (one plain backstore per LU, the patched target_core_user swapped
#: in after the stock runs) on a file.
TARGETS = (*STORES, "nexus")


def sh(vm, script: str, *, env: dict[str, str] | None = None, check: bool = True,
       timeout: float = 300) -> str:
    rc, out = vm.run(script, env={**layouts.GUEST_ENV, **(env or {})}, timeout=timeout)
    if check:
        assert rc == 0, out
    return out


@pytest.fixture(scope="module", params=TARGETS)
def store(request) -> str:
    """Where the LU lives (``nexus``: a file, served through nexus handles); module
    scope, so every test runs on one, then the next, in the same booted VM."""
    return request.param


#: The client tests' layout that is up now, by target (at most one entry): ``lu`` reuses it.
_UP: dict[str, dict[str, str]] = {}


def fresh(vm, backend: str = "ours", store: str = "file") -> dict[str, str]:
    """The loopback-mpath layout with a new image, no PR state and no APTPL leftovers."""
    _UP.clear()  # the reset below takes down whatever layout was up
    if store == "nexus":
        backend, store = "ours-nexus", "file"
    return layouts.setup(vm, f"loopback-mpath:{backend}@{store}", fresh=True)


def steps(transcript: str) -> list[tuple[str, str]]:
    """A scenario transcript as (step label, the step's text) pairs, in order."""
    blocks = re.split(r"^## ", transcript, flags=re.M)[1:]
    return [(b.split("\n", 1)[0], b) for b in blocks]


def exit_of(transcript: str, label: str) -> int:
    for name, text in steps(transcript):
        if name == label:
            return int(re.search(r"^exit=(\d+)$", text, re.M).group(1))
    raise KeyError(label)


# --- sg_persist: every service action and type, and the comparison with LIO -----------------

#: Where our transcript may differ from LIO's, by step label (a regular expression), and why
#: (docs/lio-comparison.md says more).  Every other step must match line for line, once the
#: relative port address and ALLOW COMMANDS lines are set aside (MASKED).
DIFFERENCES = {
    r"type \d: release with the wrong type via P1":
        "SPC-4: INVALID RELEASE OF PERSISTENT RESERVATION (ILLEGAL REQUEST); LIO: CONFLICT",
    r"(keys|full status) after (SPEC_I_PT for initiator 3|preempts?)":
        "a SPEC_I_PT TransportID for an initiator with no session on the port is registered; "
        "LIO answers GOOD but registers only the sender",
    r"register 0x6 via unregistered P4 with SPEC_I_PT for registered initiator 3":
        "SPC-4: a TransportID naming a registered nexus fails the whole command (INVALID "
        "FIELD IN PARAMETER LIST); LIO registers the sender and skips the TransportID",
    r"keys after SPEC_I_PT": "follows from the step above",
    r"move: .*": "LIO reports relative target port 0 on tcm_loop and so cannot move at all",
}
MASKED = re.compile(r"^\s+(Relative port address: 0x[0-9a-f]+|Allow Commands: \d)$", re.M)


def comparable(text: str) -> str:
    return MASKED.sub("<masked>", text)


@pytest.fixture(scope="module")
def full_transcript(vm, store: str) -> str:
    env = fresh(vm, store=store)
    out = sh(vm, SCENARIO, env=env, timeout=600)
    (vm.io / f"sg-persist-full.ours.{store}.txt").write_text(out)
    return out


def test_scenario_transcript_is_stable(full_transcript, store) -> None:
    """Ours is deterministic: the same bytes as the stored transcript of the last review, on
    either store."""
    expected = (EXPECTED / "sg-persist-full.ours.txt").read_text()
    if store == "nexus":
        # tcm_loop TPGs have no RTPI on 6.12 (the kernel's handles report 0): relative port
        # lines differ, and REGISTER AND MOVE, which names its port by RTPI, cannot run
        def usable(text: str) -> list[tuple[str, str]]:
            return [(n, comparable(b)) for n, b in steps(text) if not n.startswith("move: ")]

        assert usable(full_transcript) == usable(expected)
        return
    assert full_transcript == expected


def test_scenario_matches_lio_except_the_listed_differences(full_transcript) -> None:
    lio = steps((EXPECTED / "sg-persist-full.lio.txt").read_text())
    ours = steps(full_transcript)
    assert [name for name, _ in ours] == [name for name, _ in lio]
    differing = {name for (name, a), (_, b) in zip(ours, lio, strict=True)
                 if comparable(a) != comparable(b)}
    listed = {name for name, _ in ours if any(re.fullmatch(p, name) for p in DIFFERENCES)}
    assert differing - listed == set()  # nothing differs that is not listed ...
    assert listed - differing <= {n for n in listed if n.startswith("move: ")}  # ... or stale


#: SPC-4 table "Persistent reservation type codes": exit codes of sg_raw (0 GOOD, 24
#: RESERVATION CONFLICT) for WRITE/READ by the holder P1, registrant P2 and unregistered P3,
#: and of sg_turs on registrant P4 after P1 (P2 for all-registrants types) released
#: (6: UNIT ATTENTION, RESERVATIONS RELEASED, for the registrants-only and all-registrants types).
TYPE_TABLE = {
    #    W P1  W P2  R P2  W P3  R P3  TUR P4
    1: (0, 24, 0, 24, 0, 0),   # Write Exclusive
    3: (0, 24, 24, 24, 24, 0),  # Exclusive Access
    5: (0, 0, 0, 24, 0, 6),    # Write Exclusive - Registrants Only
    6: (0, 0, 0, 24, 24, 6),   # Exclusive Access - Registrants Only
    7: (0, 0, 0, 24, 0, 6),    # Write Exclusive - All Registrants
    8: (0, 0, 0, 24, 24, 6),   # Exclusive Access - All Registrants
}


@pytest.mark.parametrize("rtype", sorted(TYPE_TABLE))
def test_each_type_lets_through_what_spc_allows(full_transcript, rtype: int) -> None:
    labels = ["WRITE via holder P1", "WRITE via registrant P2", "READ via registrant P2",
              "WRITE via unregistered P3", "READ via unregistered P3",
              "TUR via P4 (unit attention for types 5-8)"]
    got = tuple(exit_of(full_transcript, f"type {rtype}: {label}") for label in labels)
    assert got == TYPE_TABLE[rtype]
    for label in ("reserve via P1", f"release via {'P2' if rtype >= 7 else 'P1'}"):
        assert exit_of(full_transcript, f"type {rtype}: {label}") == 0
    assert exit_of(full_transcript, f"type {rtype}: reserve other type via P2 (conflict)") == 24
    assert exit_of(full_transcript, f"type {rtype}: release with the wrong type via P1") == 5


def test_service_actions_beyond_the_types(full_transcript, store) -> None:
    t = dict(steps(full_transcript))
    assert "exit=24" in t["register with a wrong key via P2 (conflict)"]
    assert "PR generation=0x4, 3 registered reservation keys follow:\n    0x1\n    0x2\n    0x44" \
        in t["keys after registrations"]  # REGISTER AND IGNORE replaced P4's 0x4
    assert "Persist Through Power Loss Active(PTPL_A): 1" in t["capabilities (APTPL now active)"]
    assert "exit=24" in t["register 0x3 via P3 with ALL_TG_PT (overlaps initiator 3 on port 4: "
                          "conflict)"]
    status = t["full status after SPEC_I_PT for initiator 3"]
    # SPEC_I_PT (-X): the sender and initiator 3, both on the sender's port 4 (under
    # ours-nexus the port's RTPI is the kernel's: 0 for tcm_loop, reported as unknown)
    port = "0x[0-9a-f]+" if store == "nexus" else "0x4"
    for sas in ("0x5001405bb0000004", "0x5001405bb0000003"):
        assert re.search(rf"Key=0x4\s+All target ports bit clear\s+Relative port address: {port}\s+"
                         rf"not reservation holder\s+Transport Id of initiator:\s+"
                         rf"SAS address: {sas}", status), status
    assert re.search(r"Key=0x3\s+All target ports bit set", t["full status with ALL_TG_PT"])
    assert "exit=5" in t["register 0x6 via unregistered P4 with SPEC_I_PT for registered "
                         "initiator 3"]
    assert "exit=5" in t["register 0x5 via P1 with SPEC_I_PT from a registered nexus (refused)"]
    assert "Registrations preempted" in t["TUR via P1 (unit attention expected)"]
    assert re.search(r"Key=0x2\s+All target ports bit clear\s+Relative port address: "
                     rf"{'0x2' if store != 'nexus' else port}\s+<< Reservation holder >>",
                     t["full status after preempt"])
    assert "exit=24" in t["WRITE via preempted P1"]
    assert "exit=24" in t["preempt with an unknown key (conflict)"]
    assert "there is NO reservation held" in t["reservation after clear"]
    assert "Persist Through Power Loss Active(PTPL_A): 0" in t["capabilities after clear"]
    if store == "nexus":
        # REGISTER AND MOVE names the destination port by RTPI, and tcm_loop's TPGs have
        # none on 6.12 (the kernel's handles report 0): the layout exports no RTPI for -Q.
        assert "bad argument to '--relative-target-port'" in t["move: to registered "
                                                               "initiator 2 on its port"]
        return
    # REGISTER AND MOVE (-M -X -Q), then with UNREG (-U).
    assert "exit=0" in t["move: to registered initiator 2 on its port"]
    assert "Key=0x2" in t["move: reservation"]
    assert "exit=24" in t["move: from a non-holder (conflict)"]
    moved = t["move: full status"]
    assert "0x5001405bb0000001" not in moved  # the source was unregistered
    assert re.search(r"Key=0x4\s+All target ports bit clear\s+Relative port address: 0x4\s+"
                     r"<< Reservation holder >>\s+scope: LU_SCOPE,  type: Write Exclusive\n",
                     moved)
    assert "exit=0" in t["move: WRITE via new holder P4"]
    assert "exit=24" in t["move: WRITE via moved-away P1"]
    assert "there are NO registered reservation keys" in t["move: keys"]


def test_lio_reference_transcript_is_current(vm) -> None:
    """LIO's own PR, re-run: the stored reference must still be what this kernel answers."""
    env = fresh(vm, "lio-ramdisk-pr")
    out = sh(vm, SCENARIO, env=env, timeout=600)
    (vm.io / "sg-persist-full.lio.txt").write_text(out)
    assert out == (EXPECTED / "sg-persist-full.lio.txt").read_text()


# --- the other clients ---------------------------------------------------------------------

#: Shell prelude for client jobs: the paths as an array, the map, the ioctl tool, ``settle``
#: (take pending unit attentions) and ``t LABEL CMD...`` (one line: "[LABEL] rc=N output").
PRELUDE = f"""
P=($TCMU_PR_PATHS); M=$TCMU_PR_MPATH; I="{IOCTL}"
settle() {{ for p in "${{P[@]}}"; do for _ in 1 2 3 4; do sg_turs $p && break; done; done \\
    >/dev/null 2>&1; }}
t() {{ local l=$1; shift; local o; o=$("$@" 2>&1); echo "[$l] rc=$? $(echo $o)"; }}
w1() {{ sg_raw -s 512 -i /dev/zero "$1" 2a 00 00 00 00 00 00 00 01 00; }}
"""


def results(out: str) -> dict[str, tuple[int, str]]:
    """The ``t`` lines of a job: label -> (exit code, output on one line)."""
    found = {}
    for m in re.finditer(r"^\[(.+?)\] rc=(\d+) ?(.*)$", out, re.M):
        found[m.group(1)] = (int(m.group(2)), m.group(3))
    return found


#: Empties the PR state of a layout that is up: REGISTER AND IGNORE on path 1 (allowed
#: whatever is held), CLEAR, then take the unit attentions CLEAR left on the other paths.
#: Exit 0 only if no key and no reservation remain.
CLEAR_ALL = """
sg_persist -n -o -I -S 0x7e57 ${P[0]} >/dev/null && sg_persist -n -o -C -K 0x7e57 ${P[0]} \
    >/dev/null || exit 1
settle
sg_persist -n -i -k ${P[0]} | grep -q "there are NO registered reservation keys" || exit 1
sg_persist -n -i -r ${P[0]} | grep -q "there is NO reservation held"
"""


@pytest.fixture
def lu(vm, store: str) -> dict[str, str]:
    """The target's layout with no registrations and no reservation: the one the previous
    client test used once CLEAR_ALL empties it, else a fresh one (the first test, a test that
    broke the layout, another layout in between)."""
    env = _UP.get(store)
    if env is None or vm.run(PRELUDE + CLEAR_ALL, env=env, timeout=120)[0] != 0:
        env = fresh(vm, store=store)
    _UP[store] = env
    return env


def test_block_ioctls_on_one_path(vm, lu) -> None:
    r = results(sh(vm, PRELUDE + """
t register $I ${P[0]} register 0 0x11
t reregister $I ${P[0]} register 0x11 0x12
t register-ignore $I ${P[0]} register 0x99 0x13 --ignore
t reserve-we $I ${P[0]} reserve 0x13 1
t reservation sg_persist -n -i -r ${P[1]}
t write-p2 w1 ${P[1]}
t release $I ${P[0]} release 0x13 1
t write-p2-after w1 ${P[1]}
sg_persist -n -o -I -S 0x22 ${P[1]} >/dev/null; settle
t reserve-we-ro $I ${P[0]} reserve 0x13 3
t preempt $I ${P[0]} preempt 0x13 0x22 3
settle; t keys-after-preempt sg_persist -n -i -k ${P[0]}
sg_persist -n -o -I -S 0x22 ${P[1]} >/dev/null; settle
t preempt-abort timeout 60 $I ${P[0]} preempt 0x13 0x22 3 --abort
settle; t keys-after-abort sg_persist -n -i -k ${P[0]}
t write-p1 w1 ${P[0]}
t clear $I ${P[0]} clear 0x13
settle; t keys-after-clear sg_persist -n -i -k ${P[0]}
""", env=lu))
    for op in ("register", "reregister", "register-ignore", "reserve-we", "release",
               "reserve-we-ro", "preempt", "preempt-abort", "clear"):
        assert r[op] == (0, "ok"), (op, r[op])
    assert "Key=0x13 scope: LU_SCOPE, type: Write Exclusive" in r["reservation"][1]
    assert r["write-p2"][0] == 24 and r["write-p2-after"][0] == 0
    for step in ("keys-after-preempt", "keys-after-abort"):
        assert r[step][1].endswith("1 registered reservation key follows: 0x13"), r[step]
    assert r["write-p1"][0] == 0
    assert "there are NO registered reservation keys" in r["keys-after-clear"][1]


def test_block_ioctls_on_the_multipath_map(vm, lu) -> None:
    """dm-multipath registers on every path and sends the rest down one.  PREEMPT AND ABORT
    through the map is what hangs LIO's own PR (REFERENCE.md); ours completes, and I/O
    through the map goes on once the preempted path registers again."""
    r = results(sh(vm, PRELUDE + """
t register $I $M register 0 0x31
t keys sg_persist -n -i -k ${P[2]}
t reserve $I $M reserve 0x31 3
t reservation sg_persist -n -i -r ${P[2]}
t write dd if=/dev/urandom of=$M bs=64k count=4 oflag=direct
sg_persist -n -o -I -S 0x44 ${P[3]} >/dev/null; settle
t preempt-abort timeout 120 $I $M preempt 0x31 0x44 3 --abort
settle; t keys-after-abort sg_persist -n -i -k ${P[0]}
sg_persist -n -o -I -S 0x31 ${P[3]} >/dev/null; settle
head -c 1048576 /dev/urandom >/tmp/pattern
t write-after dd if=/tmp/pattern of=$M bs=64k oflag=direct
t read-after dd if=$M of=/tmp/back bs=64k count=16 iflag=direct
t same cmp /tmp/pattern /tmp/back
t release $I $M release 0x31 3
t clear $I $M clear 0x31
settle; t keys-after-clear sg_persist -n -i -k ${P[0]}
t reservation-after-clear sg_persist -n -i -r ${P[0]}
""", env=lu, timeout=400))
    for op in ("register", "reserve", "preempt-abort", "release", "clear"):
        assert r[op] == (0, "ok"), (op, r[op])
    assert r["keys"][1].endswith("4 registered reservation keys follow: 0x31 0x31 0x31 0x31")
    assert "Key=0x31 scope: LU_SCOPE, type: Write Exclusive, registrants only" in \
        r["reservation"][1]
    assert r["keys-after-abort"][1].endswith("3 registered reservation keys follow: "
                                             "0x31 0x31 0x31"), r["keys-after-abort"]
    for op in ("write", "write-after", "read-after", "same"):
        assert r[op][0] == 0, (op, r[op])
    assert "there are NO registered reservation keys" in r["keys-after-clear"][1]
    assert "there is NO reservation held" in r["reservation-after-clear"][1]


def test_mpathpersist(vm, lu) -> None:
    r = results(sh(vm, PRELUDE + """
t register mpathpersist --out --register --param-sark=0x123 $M
t keys mpathpersist --in -k $M
t reserve mpathpersist --out --reserve --param-rk=0x123 --prout-type=5 $M
t reservation mpathpersist --in -r $M
t write-unregistered w1 ${P[0]}
t write dd if=/dev/zero of=$M bs=4k count=8 oflag=direct
t release mpathpersist --out --release --param-rk=0x123 --prout-type=5 $M
t reservation-after mpathpersist --in -r $M
t clear mpathpersist --out --clear --param-rk=0x123 $M
t keys-after mpathpersist --in -k $M
""", env=lu))
    for op in ("register", "reserve", "write", "release", "clear"):
        assert r[op][0] == 0, (op, r[op])
    assert r["keys"][1].endswith("4 registered reservation keys follow: "
                                 "0x123 0x123 0x123 0x123")
    assert "Key = 0x123 scope = LU_SCOPE, type = Write Exclusive, registrants only" in \
        r["reservation"][1]
    assert r["write-unregistered"][0] == 0  # every path of the map is a registrant
    assert "there is NO reservation held" in r["reservation-after"][1]
    assert r["keys-after"][1].endswith("0 registered reservation key.")


def test_fence_scsi(vm, lu) -> None:
    """Two "nodes": key 2 on path 2, key 1 on path 1 (the local node: its key is the one
    fence_scsi stores last).  Fencing key 2 is PREEMPT AND ABORT from path 1."""
    r = results(sh(vm, PRELUDE + """
rm -f /var/run/cluster/fence_scsi.key /var/run/cluster/fence_scsi.dev
t on-2 fence_scsi -d ${P[1]} -k 2 -o on
t on-1 fence_scsi -d ${P[0]} -k 1 -o on
t status-1 fence_scsi -d ${P[0]} -k 1 -o status
t status-2 fence_scsi -d ${P[1]} -k 2 -o status
t write-p2 w1 ${P[1]}
t off-2 timeout 120 fence_scsi -d ${P[0]} -k 2 -o off
t status-2-after fence_scsi -d ${P[1]} -k 2 -o status
settle
t write-p2-after w1 ${P[1]}
t write-p1-after w1 ${P[0]}
t reservation sg_persist -n -i -r ${P[0]}
""", env=lu, timeout=400))
    assert r["on-2"] == (0, "Success: Powered ON") and r["on-1"] == (0, "Success: Powered ON")
    assert r["status-1"] == (0, "Status: ON") and r["status-2"] == (0, "Status: ON")
    assert r["write-p2"][0] == 0
    assert r["off-2"] == (0, "Success: Powered OFF"), r["off-2"]
    assert r["status-2-after"] == (2, "Status: OFF")
    assert r["write-p2-after"][0] == 24 and r["write-p1-after"][0] == 0
    # PREEMPT of the holder moved the type 5 reservation to the fencing node.
    assert "Key=0x1 scope: LU_SCOPE, type: Write Exclusive, registrants only" in \
        r["reservation"][1]


#: The image's multipath.conf (tests/vm/build-image) plus what fence_mpath needs.
MPATH_CONF = "defaults {\n    user_friendly_names yes\n    find_multipaths no\n%s}\n"


def test_fence_mpath(vm, lu) -> None:
    """fence_mpath needs multipathd to know the node's key (``reservation_key file``);
    path 4 stands for the other node (key 4)."""
    conf = MPATH_CONF % "    reservation_key file\n"
    try:
        r = results(sh(vm, PRELUDE + f"""
printf '{conf}' >/etc/multipath.conf; multipathd reconfigure >/dev/null; sleep 2
rm -f /run/cluster/mpath.devices
t on fence_mpath -d $M -k 3 -o on
t status-3 fence_mpath -d $M -k 3 -o status
t keys sg_persist -n -i -k ${{P[0]}}
sg_persist -n -o -I -S 0x4 ${{P[3]}} >/dev/null; settle
t status-4 fence_mpath -d $M -k 4 -o status
t off timeout 120 fence_mpath -d $M -k 4 -o off
t status-4-after fence_mpath -d $M -k 4 -o status
t status-3-after fence_mpath -d $M -k 3 -o status
settle
t write-p4 w1 ${{P[3]}}
t keys-after sg_persist -n -i -k ${{P[0]}}
sg_persist -n -o -I -S 0x3 ${{P[3]}} >/dev/null; settle
t write-map dd if=/dev/zero of=$M bs=4k count=16 oflag=direct
""", env=lu, timeout=400))
    finally:
        sh(vm, f"printf '{MPATH_CONF % ''}' >/etc/multipath.conf; multipathd reconfigure",
           check=False)
    assert r["on"] == (0, "Success: Powered ON")
    assert r["status-3"] == (0, "Status: ON") and r["status-4"] == (0, "Status: ON")
    assert r["keys"][1].endswith("4 registered reservation keys follow: 0x3 0x3 0x3 0x3")
    assert r["off"] == (0, "Success: Powered OFF"), r["off"]
    assert r["status-4-after"] == (2, "Status: OFF")
    assert r["status-3-after"] == (0, "Status: ON")
    assert r["write-p4"][0] == 24
    assert r["keys-after"][1].endswith("3 registered reservation keys follow: 0x3 0x3 0x3")
    assert r["write-map"][0] == 0, r["write-map"]


def test_fio_verify_and_capacity_through_the_map(vm, lu) -> None:
    out = sh(vm, PRELUDE + """
blockdev --getsize64 "${P[@]}" $M
fio --name=verify --filename=$M --rw=randwrite --verify=crc32c --verify_fatal=1 --size=32M \
    --bs=4k --iodepth=16 --direct=1 --ioengine=libaio --output-format=terse --terse-version=3
""", env=lu, timeout=600)
    lines = out.split()
    assert lines[:5] == [str(SIZE)] * 5
    terse = lines[5].split(";")
    assert terse[:5] == ["3", terse[1], "verify", "0", "0"], terse[:5]  # error field 0
    assert int(terse[5]) == 32 * 1024  # KiB read back and verified


# --- persistence across a power cycle ------------------------------------------------------

def test_aptpl_registrations_and_reservation_survive_a_vm_reboot(tmp_path) -> None:
    """Two boots on one disk (vmrig's ``overlay``): APTPL registrations and a reservation
    made before the power-off are there after it, through a new daemon and a new layout (on
    RBD: the guest's cluster, resumed on its data, too).  Both stores in the one pair of
    boots: each LU gets its state in the first, each is checked in the second."""
    disk = tmp_path / "disk.qcow2"
    check = PRELUDE + """
settle
sg_persist -n -i -k ${P[2]}; sg_persist -n -i -r ${P[2]}; sg_persist -n -i -c ${P[2]} | grep PTPL_A
t write-p3 w1 ${P[2]}
t write-p2 w1 ${P[1]}
"""
    before, after = {}, {}
    with vmrig.VM(overlay=disk, memory_mb=1024) as first:
        for where in STORES:  # a new disk: nothing to remove; the next layout keeps this one's
            env = layouts.setup(first, f"loopback-mpath:ours@{where}")
            sh(first, PRELUDE + """
sg_persist -n -o -G -Z -S 0xa1 ${P[0]} && sg_persist -n -o -G -Z -S 0xa2 ${P[1]}
sg_persist -n -o -R -K 0xa1 --prout-type=5 ${P[0]}""", env=env)
            before[where] = sh(first, check, env=env)
    with vmrig.VM(overlay=disk, memory_mb=1024) as second:
        for where in STORES:
            env = layouts.setup(second, f"loopback-mpath:ours@{where}")
            after[where] = sh(second, check, env=env)
    for where in STORES:
        b = before[where]
        assert "2 registered reservation keys follow:\n    0xa1\n    0xa2" in b, where
        assert "Key=0xa1\n    scope: LU_SCOPE,  type: Write Exclusive, registrants only" in b
        assert "Persist Through Power Loss Active(PTPL_A): 1" in b
        assert "[write-p3] rc=24" in b and "[write-p2] rc=0" in b
        assert after[where] == b, where
