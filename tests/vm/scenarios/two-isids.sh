#!/bin/bash
# One initiator, one portal, two sessions (two ISIDs): two I_T nexuses.  Runs on the
# iscsi-2gw layout with the ours-nexus backend (one TCMU device, the kernel names each
# command's nexus).  open-iscsi opens a second session of client1 to gateway 1
# (node.session.nr_sessions=2); a key registered and a WRITE EXCLUSIVE reservation taken
# through the first session's disk must leave the second session's disk an unregistered,
# refused nexus.  Prints a transcript with `KEY=value` lines for
# tests/vm/test_two_gateways.py; exits non-zero only when the setup itself fails.
set -u
die() { echo "FATAL: $*"; exit 1; }
read -r -a paths <<<"${TCMU_PR_PATHS:?no TCMU_PR_PATHS: run on the iscsi-2gw layout}"
read -r -a initiators <<<"${TCMU_PR_INITIATORS:?no TCMU_PR_INITIATORS}"
init=${initiators[0]}
target=iqn.2003-01.org.linux-iscsi.tcmu-pr:gw1 portal=127.0.0.1:3261

acl_info=/sys/kernel/config/target/iscsi/$target/tpgt_1/acls/$init/info
# The layout's session of client1 to gateway 1: its disk and (TCMU_PR_NEXUS_1) its ISID.
dev1=${paths[0]}
isid1=$(cut -d, -f3 <<<"${TCMU_PR_NEXUS_1:?no TCMU_PR_NEXUS_1}")
# The disks of every session of client1 to gateway 1, one a line.
session_disks() {
    local s dev
    for s in /sys/class/iscsi_session/session*; do
        [[ $(cat "$s/targetname" 2>/dev/null) == "$target" ]] || continue
        [[ $(cat "$s/initiatorname" 2>/dev/null) == "$init" ]] || continue
        dev=$(ls "$s"/device/target*/*/block 2>/dev/null | head -n 1) || true
        echo "/dev/${dev:-none}"
    done
}
# The ISID LIO shows for client1 on gateway 1 (0x..., leading zeros dropped).  The ACL's
# info lists only the node's newest session: after the second login, the second one's.
target_isid() {
    local hex
    hex=$(grep -o 'ISID: 0x[0-9a-fA-F ]*' "$acl_info" | head -n 1) || return 0
    hex=${hex#ISID: 0x} hex=${hex// /}
    [[ $hex =~ ^[0-9a-fA-F]{12}$ ]] && printf '0x%x\n' "$((16#$hex))"
}

echo "== second session of $init through $portal (nr_sessions=2)"
iscsiadm -m node -T "$target" -p "$portal" -I client1 -o update \
    -n node.session.nr_sessions -v 2 || die "nr_sessions update failed"
iscsiadm -m node -T "$target" -p "$portal" -I client1 -l 2>&1 | sed 's/^/  /'
# Wait (deadline 60 s) for two sessions, each with its disk, LIO showing the new one.
isid2=
for ((try = 0; try < 300; try++)); do
    mapfile -t disks < <(session_disks)
    isid2=$(target_isid)
    ((${#disks[@]} == 2)) && [[ ${disks[*]} != *none* && -n $isid2 && $isid2 != "$isid1" ]] \
        && break
    sleep 0.2
done
echo "  initiator side: ${disks[*]}; LIO's newest ISID: $isid2 (the first: $isid1)"
((${#disks[@]} == 2)) && [[ ${disks[*]} != *none* && -n $isid2 && $isid2 != "$isid1" ]] \
    || { iscsiadm -m session -P3; cat "$acl_info"; die "no two sessions with disks"; }
dev2=
for d in "${disks[@]}"; do [[ $d == "$dev1" ]] || dev2=$d; done
[[ -n $dev2 ]] || die "session 1's disk $dev1 is not among them"
echo "SESSIONS=${#disks[@]}"
echo "ISID1=$isid1"
echo "ISID2=$isid2"
echo "DEV1=$dev1"
echo "DEV2=$dev2"
echo "SAME_LUN=$( [[ $(sg_inq -p 0x83 -r "$dev1" | od -An -tx1) == \
    $(sg_inq -p 0x83 -r "$dev2" | od -An -tx1) ]] && echo yes || echo no)"
if pgrep -x systemd-udevd >/dev/null; then udevadm settle -t 60 || true; fi

echo "== register 0xa1 and reserve (Write Exclusive) through session 1 ($dev1)"
sg_persist -n -o -G -S 0xa1 "$dev1"; echo "REGISTER_RC=$?"
sg_persist -n -o -R -K 0xa1 --prout-type=1 "$dev1"; echo "RESERVE_RC=$?"

echo "== session 2 ($dev2): READ KEYS, WRITE(10), dd, READ FULL STATUS"
keys=$(sg_persist -n -i -k "$dev2"); echo "READKEYS_RC=$?"
sed 's/^/  /' <<<"$keys"
echo "KEYS=$(grep -cE '^\s+0x[0-9a-f]+' <<<"$keys")"
# One WRITE(10) of block 0; a unit attention left from login is taken and the WRITE retried.
for _ in 1 2 3; do
    sg_raw -s 512 -i /dev/zero "$dev2" 2a 00 00 00 00 00 00 00 01 00 >/dev/null 2>&1
    rc=$?
    ((rc == 6)) || break
done
echo "WRITE2_SG_RAW_RC=$rc"  # 24: RESERVATION CONFLICT
out=$(dd if=/dev/zero of="$dev2" bs=4k count=1 oflag=direct 2>&1); rc=$?
sed 's/^/  /' <<<"$out"
echo "WRITE2_DD_RC=$rc"
out=$(dd if=/dev/zero of="$dev1" bs=4k count=1 oflag=direct 2>&1); rc=$?
echo "WRITE1_DD_RC=$rc"  # the holder writes
full=$(sg_persist -n -i -s "$dev2"); echo "FULLSTATUS_RC=$?"
sed 's/^/  /' <<<"$full"
grep -oiE 'iSCSI world wide unique port id: \S+' <<<"$full" | sed 's/^.*: /REGISTRANT=/'

echo "== clean up: release, unregister, back to one session"
sg_persist -n -o -C -K 0xa1 "$dev1" >/dev/null
iscsiadm -m node -T "$target" -p "$portal" -I client1 -o update \
    -n node.session.nr_sessions -v 1
echo "DONE"
