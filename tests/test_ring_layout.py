"""tcmu_pr.ring.layout and native/ring.h against the kernel's own uapi header."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tcmu_pr.ring import layout as L

UAPI = Path("/usr/include/linux/target_core_user.h")

PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/target_core_user.h>
#define P(name, expr) printf("%s %zu\n", name, (size_t)(expr))
int main(void) {
    P("MB_CMD_HEAD", offsetof(struct tcmu_mailbox, cmd_head));
    P("MB_CMD_TAIL", offsetof(struct tcmu_mailbox, cmd_tail));
    P("MB_CMDR_OFF", offsetof(struct tcmu_mailbox, cmdr_off));
    P("MB_CMDR_SIZE", offsetof(struct tcmu_mailbox, cmdr_size));
    P("MB_FLAGS", offsetof(struct tcmu_mailbox, flags));
    P("MAILBOX_SIZE", sizeof(struct tcmu_mailbox));
    P("HDR_CMD_ID", offsetof(struct tcmu_cmd_entry_hdr, cmd_id));
    P("HDR_UFLAGS", offsetof(struct tcmu_cmd_entry_hdr, uflags));
    P("REQ_IOV_CNT", offsetof(struct tcmu_cmd_entry, req.iov_cnt));
    P("REQ_IOV_BIDI_CNT", offsetof(struct tcmu_cmd_entry, req.iov_bidi_cnt));
    P("REQ_IOV_DIF_CNT", offsetof(struct tcmu_cmd_entry, req.iov_dif_cnt));
    P("REQ_CDB_OFF", offsetof(struct tcmu_cmd_entry, req.cdb_off));
    P("REQ_IOV", offsetof(struct tcmu_cmd_entry, req.iov));
    P("RSP_SCSI_STATUS", offsetof(struct tcmu_cmd_entry, rsp.scsi_status));
    P("RSP_READ_LEN", offsetof(struct tcmu_cmd_entry, rsp.read_len));
    P("RSP_SENSE", offsetof(struct tcmu_cmd_entry, rsp.sense_buffer));
    P("ENTRY_SIZE", sizeof(struct tcmu_cmd_entry));
    P("TMR_TYPE", offsetof(struct tcmu_tmr_entry, tmr_type));
    P("TMR_CMD_CNT", offsetof(struct tcmu_tmr_entry, cmd_cnt));
    P("TMR_CMD_IDS", offsetof(struct tcmu_tmr_entry, cmd_ids));
    P("SENSE_BUFFERSIZE", TCMU_SENSE_BUFFERSIZE);
    P("MAILBOX_VERSION", TCMU_MAILBOX_VERSION);
    P("FLAG_CAP_OOOC", TCMU_MAILBOX_FLAG_CAP_OOOC);
    P("FLAG_CAP_READ_LEN", TCMU_MAILBOX_FLAG_CAP_READ_LEN);
    P("FLAG_CAP_TMR", TCMU_MAILBOX_FLAG_CAP_TMR);
    P("FLAG_CAP_KEEP_BUF", TCMU_MAILBOX_FLAG_CAP_KEEP_BUF);
    P("OP_PAD", TCMU_OP_PAD);
    P("OP_CMD", TCMU_OP_CMD);
    P("OP_TMR", TCMU_OP_TMR);
    P("OP_MASK", TCMU_OP_MASK);
    P("UFLAG_READ_LEN", TCMU_UFLAG_READ_LEN);
    P("UFLAG_KEEP_BUF", TCMU_UFLAG_KEEP_BUF);
    P("TMR_LUN_RESET", TCMU_TMR_LUN_RESET);
    return 0;
}
"""


def test_layout_matches_the_kernel_header(tmp_path):
    assert UAPI.exists(), f"{UAPI} missing: linux-libc-dev (scripts/setup) provides it"
    src = tmp_path / "probe.c"
    src.write_text(PROBE)
    subprocess.run(["gcc", "-o", tmp_path / "probe", src], check=True)
    out = subprocess.run([tmp_path / "probe"], check=True, capture_output=True, text=True)
    kernel = {name: int(v) for name, v in (line.split() for line in out.stdout.splitlines())}
    ours = {name: getattr(L, name) for name in kernel}
    assert ours == kernel
    # the 6.12 trap: the request is not packed inside the packed entry
    assert (kernel["REQ_CDB_OFF"], kernel["REQ_IOV"]) == (24, 48)


def test_native_ring_h_pins_the_same_offsets(tmp_path):
    """ring.c's _Static_asserts hold these numbers; compiling it proves they still do."""
    native = Path(__file__).resolve().parents[1] / "native"
    assert "offsetof(struct tcmu_cmd_entry, req.cdb_off) == 24" in (native / "ring.c").read_text()
    subprocess.run(["gcc", "-fsyntax-only", "-std=gnu11", f"-I{native}", native / "ring.c"],
                   check=True)  # fmt: skip


def test_cmd_entry_size_follows_the_kernel_formula():
    # max(offsetof(iov[n]), sizeof(entry)) + CDB, rounded up to 8
    assert L.cmd_entry_size(0, 6) == 120
    assert L.cmd_entry_size(1, 10) == 128
    assert L.cmd_entry_size(4, 16) == 128
    assert L.cmd_entry_size(5, 16) == 144
    assert L.cmd_entry_size(8, 16) == 192


def test_cdb_length_by_group():
    assert [L.cdb_length(bytes([op]) + bytes(7)) for op in (0x00, 0x28, 0x5F, 0x88, 0xA8)] == [
        6, 10, 10, 16, 12,
    ]  # fmt: skip
    assert L.cdb_length(bytes([0x7F, 0, 0, 0, 0, 0, 0, 24])) == 32
