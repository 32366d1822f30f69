#!/bin/bash
# Two gateways, two daemons, one LU: a reservation taken through gateway 1 is what gateway 2
# reports, and a nexus fenced through gateway 2 is refused by gateway 1.  Runs on the
# iscsi-2gw layout (TCMU_PR_PATHS = client1@gw1 client1@gw2 client2@gw1 client2@gw2) with
# real sg_persist / sg_raw / dd; prints a readable transcript, exits non-zero when the
# gateways disagree.  Used by tests/vm/test_two_gateways.py and `scripts/demo`.
set -u
read -r -a paths <<<"${TCMU_PR_PATHS:?no TCMU_PR_PATHS: run on the iscsi-2gw layout}"
((${#paths[@]} == 4)) || { echo "need the 4 iscsi-2gw paths" >&2; exit 2; }
C1G1=${paths[0]} C1G2=${paths[1]} C2G1=${paths[2]} C2G2=${paths[3]}
label() {
    case $1 in
        "$C1G1") echo "client1 via gw1" ;; "$C1G2") echo "client1 via gw2" ;;
        "$C2G1") echo "client2 via gw1" ;; "$C2G2") echo "client2 via gw2" ;;
    esac
}
failures=0
say() { printf '\n== %s\n' "$*"; }
run() {  # show a command, its output indented, and "ok" for a silent success
    local out rc
    echo "\$ $*"
    out=$("$@" 2>&1) && rc=0 || rc=$?
    [[ -n $out ]] && sed 's/^/  /' <<<"$out"
    if ((rc)); then echo "  (exit $rc)"; elif [[ -z $out ]]; then echo "  ok"; fi
}
# One WRITE(10) of block 0 through sg_raw; prints the SCSI status by name.
write1() {
    local dev=$1 want=$2 got out
    out=$(sg_raw -s 512 -i /dev/urandom "$dev" 2a 00 00 00 00 00 00 00 01 00 2>&1)
    case $? in
        0) got="GOOD" ;;
        24) got="RESERVATION CONFLICT" ;;
        6) got="UNIT ATTENTION" ;;
        *) got="$(grep -m1 -o 'SCSI Status: .*' <<<"$out" || echo "error")" ;;
    esac
    printf '  WRITE(10) %-16s (%s): %s' "$(label "$dev")" "$dev" "$got"
    if [[ $got == "$want" ]]; then echo "  [as expected]"; else
        echo "  [EXPECTED $want]"; failures=$((failures + 1)); fi
}

state=${TCMU_PR_STATE:-/run/tcmu-pr}
# Which daemons this layout started: their pid files (a reset removes them; logs stay).
if [[ -s $state/daemon-gw1.pid ]]; then
    say "two tcmu-pr daemons, one per gateway, each serving only its own devices"
else  # ours-nexus: one device per LU behind both gateways, the kernel names each nexus
    say "one tcmu-pr daemon serving the LU's one device behind both gateways"
fi
pgrep -af 'tcmu_pr daemon|tcmu-pr daemon' | grep -v pgrep | sed 's/^/  /'
for log in "$state"/daemon-gw1.log "$state"/daemon-gw2.log "$state"/daemon.log; do
    [[ -s ${log%.log}.pid ]] || continue
    name=${log##*/daemon-} name=${name%.log}
    [[ $log == */daemon.log ]] && name=nexus
    grep -o 'serving device [0-9]*: tcm-user/[0-9]*/[^/]*' "$log" | sed "s/^/  $name daemon: /"
done

say "both clients register on both gateways (4 I_T nexuses, one shared PR state)"
run sg_persist -n -o -G -S 0xa1 "$C1G1"
run sg_persist -n -o -G -S 0xa1 "$C1G2"
run sg_persist -n -o -G -S 0xb2 "$C2G1"
run sg_persist -n -o -G -S 0xb2 "$C2G2"

say "client1 reserves through gateway 1 (type 5: Write Exclusive, Registrants Only)"
run sg_persist -n -o -R -K 0xa1 --prout-type=5 "$C1G1"
say "gateway 2 reports the same reservation and keys"
run sg_persist -n -i -r "$C2G2"
run sg_persist -n -i -k "$C2G2"
grep -q "Key=0xa1" <(sg_persist -n -i -r "$C2G2") || { echo "  [gw2 DISAGREES]"; failures=$((failures + 1)); }

# udevd, if it runs, re-probes a disk closed after writing (its inotify watch): hold its event
# queue so those reads cannot take the unit attention the fenced client's first write must see.
if pgrep -x systemd-udevd >/dev/null; then
    udevadm settle -t 60 || true
    udevadm control --stop-exec-queue
    trap 'udevadm control --start-exec-queue' EXIT
fi
say "client2 fences client1 through gateway 2 (PREEMPT AND ABORT, as fence_scsi does)"
run sg_persist -n -o -A -K 0xb2 -S 0xa1 --prout-type=5 "$C2G2"
# No pause: its GOOD came only once gateway 1's daemon enforced it (docs/consistency.md).

say "the fenced client is refused by BOTH gateways; client2 writes through both"
write1 "$C1G1" "UNIT ATTENTION"        # registrations preempted: reported once ...
write1 "$C1G1" "RESERVATION CONFLICT"  # ... then refused
write1 "$C1G2" "UNIT ATTENTION"
write1 "$C1G2" "RESERVATION CONFLICT"
write1 "$C2G1" "GOOD"
write1 "$C2G2" "GOOD"
echo "\$ dd if=/dev/zero of=$C1G1 bs=4k count=1 oflag=direct"
echo "  # the block layer's view: RESERVATION CONFLICT reaches dd as EBADE (Invalid exchange)"
dd if=/dev/zero of="$C1G1" bs=4k count=1 oflag=direct 2>&1 | sed 's/^/  /'
echo "\$ dd if=$C1G1 of=/dev/null bs=4k count=1 iflag=direct   # reads are still allowed"
dd if="$C1G1" of=/dev/null bs=4k count=1 iflag=direct 2>&1 | sed 's/^/  /'

say "clean up through gateway 1"
run sg_persist -n -o -C -K 0xb2 "$C2G1"
run sg_persist -n -i -k "$C1G2"

echo
if ((failures)); then echo "RESULT: $failures check(s) failed"; exit 1; fi
echo "RESULT: both gateways agree: reservation visible everywhere, fenced nexus refused"
