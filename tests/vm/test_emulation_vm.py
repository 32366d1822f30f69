"""The SCSI command set on the real kernel: ours next to LIO's fileio and tcmu-runner.

One booted VM; for each backend the loopback-mpath layout on a file store, and
tests/vm/tools/sbc_table.py sends the same list of commands through SG_IO on the first path.
Our answers must be the ones SBC-4/SPC-4 require (EXPECTED); no command that LIO's fileio
answers GOOD may fail with us. The three columns are printed as the Markdown table that
docs/emulation.md keeps. sg3_utils' own tools then run against ours (SG3_TOOLS).
"""

from __future__ import annotations

import json

import layouts
import pytest

pytestmark = pytest.mark.vm

TABLE = "python3 /mnt/repo/tests/vm/tools/sbc_table.py"
BACKENDS = {"ours": "ours", "LIO fileio": "lio-fileio", "tcmu-runner": "tcmu-runner"}

INVALID_FIELD = "CHECK 05/24/00"
LBA_RANGE = "CHECK 05/21/00"
GOOD = "GOOD"

#: case -> (outcome, a substring the detail must contain, or "")
EXPECTED: dict[str, tuple[str, str]] = {
    "INQUIRY standard": (GOOD, "version 06 descriptors 00A0,0460,04C0"),
    "READ CAPACITY(16)": (GOOD, "LBPME 1 LBPRZ 1"),
    "VPD B0 Block Limits": (GOOD, "max unmap 4194304 descriptors 256 granularity 8"),
    "VPD B2 Logical Block Provisioning": (GOOD, "LBPU 1 LBPWS 1 LBPWS10 1 LBPRZ 1 type 2"),
    "MODE SENSE(10) caching": (GOOD, "WCE 1"),  # devices start with the cache on
    "WRITE(10)": (GOOD, ""),
    "WRITE(10) FUA": (GOOD, ""),
    "WRITE(10) WRPROTECT=1": (INVALID_FIELD, ""),
    "READ(10) DPO": (GOOD, ""),
    "READ(10) RDPROTECT=1": (INVALID_FIELD, ""),
    "READ(10) past the end": (LBA_RANGE, ""),
    "VERIFY(10) BYTCHK=0": (GOOD, ""),
    "VERIFY(10) BYTCHK=01b match": (GOOD, ""),
    "VERIFY(10) BYTCHK=01b mismatch at byte 612": ("CHECK 0E/1D/00 info=612", ""),
    "VERIFY(16) BYTCHK=11b match": (GOOD, ""),
    "VERIFY(16) BYTCHK=11b mismatch": ("CHECK 0E/1D/00 info=1537", ""),
    "VERIFY(10) past the end": (LBA_RANGE, ""),
    "VERIFY(10) VRPROTECT=1": (INVALID_FIELD, ""),
    "VERIFY(10) BYTCHK=10b": (INVALID_FIELD, ""),
    "WRITE AND VERIFY(10)": (GOOD, ""),
    "WRITE AND VERIFY(10) BYTCHK=01b": (GOOD, ""),
    "WRITE AND VERIFY(12)": (GOOD, ""),
    "WRITE AND VERIFY(16)": (GOOD, ""),
    "WRITE AND VERIFY(16) past the end": (LBA_RANGE, ""),
    "READ(10) after WRITE AND VERIFY": (GOOD, "data matches"),
    "COMPARE AND WRITE match": (GOOD, ""),
    "COMPARE AND WRITE mismatch": ("CHECK 0E/1D/00 info=1", ""),
    "COMPARE AND WRITE 255 blocks (over the limit)": (INVALID_FIELD, ""),
    "COMPARE AND WRITE FUA": (GOOD, ""),
    "WRITE(16) 64 blocks at 1024": (GOOD, ""),
    "UNMAP 64 blocks at 1024": (GOOD, ""),
    "READ(10) unmapped blocks": (GOOD, "zeros"),
    "WRITE SAME(16) UNMAP zeros": (GOOD, ""),
    "WRITE SAME(10) UNMAP zeros": (GOOD, ""),
    "WRITE SAME(16) past the end": (LBA_RANGE, ""),
    "GET LBA STATUS at 0": (GOOD, "0+16:mapped"),  # blocks 0-11 written: two 4 KiB fs blocks
    "GET LBA STATUS at 1024 (unmapped)": (GOOD, "1024+523264:deallocated"),
    "GET LBA STATUS past the end": (LBA_RANGE, ""),
    "SYNCHRONIZE CACHE(10)": (GOOD, ""),
    "SYNCHRONIZE CACHE(10) past the end": (LBA_RANGE, ""),
    "SYNCHRONIZE CACHE(16)": (GOOD, ""),
    "ORWRITE(16)": (GOOD, ""),
    "REPORT SUPPORTED OPCODES all": (GOOD, "commands"),
    "REPORT SUPPORTED OPCODES all RCTD": (GOOD, "commands"),
    "REPORT SUPPORTED OPCODES READ(10)": (GOOD, "support 3"),
}

#: sg3_utils' tools against ours: (command line after the device is appended, exit status).
SG3_TOOLS = [
    ("sg_opcodes", 0), ("sg_opcodes --rctd", 0), ("sg_opcodes --opcode=0x28 --mask", 0),
    ("sg_vpd --page=bl", 0), ("sg_vpd --page=lbpv", 0), ("sg_readcap -l", 0),
    ("sg_modes --page=8", 0), ("sg_unmap --lba=4096 --num=64", 0),
    ("sg_write_same --16 --unmap --lba=8192 --num=64", 0),
    ("sg_get_lba_status --lba=0", 0), ("sg_verify --lba=0 --count=8", 0),
    ("sg_sync --lba=0 --count=8", 0),
    # LBA 4100 was unmapped above, so it reads zeros: the compare half of caw.bin matches
    # once; the second time the block holds the write half, so it is a miscompare (14).
    ("sg_compare_and_write --in=/tmp/caw.bin --lba=4100 --num=1", 0),
    ("sg_compare_and_write --in=/tmp/caw.bin --lba=4100 --num=1", 14),
    ("sg_write_verify --in=/tmp/wv.bin --lba=2048 --num=8", 0),
    ("sg_write_verify --16 --bytchk=1 --in=/tmp/wv.bin --lba=2056 --num=8", 0),
]  # fmt: skip
#: Data files for the tools above: one 512-byte compare block of zeros then one write block
#: (COMPARE AND WRITE takes both in one buffer), and 8 blocks for WRITE AND VERIFY.
SG3_DATA = (  # printf, not yes | head: the VM's shell has pipefail, and yes dies of SIGPIPE
    "head -c 512 /dev/zero > /tmp/caw.bin && printf 'tcmu-pr!%.0s' $(seq 64) >> /tmp/caw.bin"
    " && printf 'write-and-verify%.0s' $(seq 256) > /tmp/wv.bin"
    " && stat -c %s /tmp/caw.bin /tmp/wv.bin"
)


def table(vm, backend: str) -> dict[str, tuple[str, str]]:
    env = layouts.setup(vm, f"loopback-mpath:{backend}@file", fresh=True)
    rc, out = vm.run(f"{TABLE} ${{TCMU_PR_PATHS%% *}}", env=env, timeout=300)
    assert rc == 0, out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["case"]: (r["outcome"], r["detail"]) for r in rows}


def markdown(columns: dict[str, dict[str, tuple[str, str]]]) -> str:
    names = list(columns)
    lines = ["| command | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for case in EXPECTED:
        cells = []
        for name in names:
            outcome, detail = columns[name].get(case, ("-", ""))
            cells.append(f"{outcome}{' (' + detail + ')' if detail else ''}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_commands_answer_as_sbc4_says_next_to_lio_and_tcmu_runner(vm):
    columns = {name: table(vm, backend) for name, backend in BACKENDS.items()}
    print("\n" + markdown(columns))
    ours = columns["ours"]
    # every row: what the standard says (so no row where fileio answers and we do not)
    wrong = {case: ours.get(case) for case, (outcome, detail) in EXPECTED.items()
             if ours.get(case, ("", ""))[0] != outcome or detail not in ours[case][1]}  # fmt: skip
    assert not wrong, wrong


def test_sg3_utils_tools_against_ours(vm):
    env = layouts.setup(vm, "loopback-mpath:ours@file", fresh=True)
    rc, out = vm.run(SG3_DATA, env=env, timeout=60)
    assert (rc, out.split()) == (0, ["1024", "4096"]), out
    failed = {}
    for tool, want in SG3_TOOLS:
        rc, out = vm.run(f"{tool} ${{TCMU_PR_PATHS%% *}}", env=env, timeout=120)
        print(f"$ {tool}  -> {rc}\n{out[-600:]}")
        if rc != want:
            failed[tool] = (rc, out[-400:])
    assert not failed, failed
