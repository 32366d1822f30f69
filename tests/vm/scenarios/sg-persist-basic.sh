#!/bin/bash
# The basic PR scenario through sg_persist/sg_raw on the layout's paths (TCMU_PR_PATHS):
# register on P1 and P2, reserve type 5 (Write Exclusive - Registrants Only), read keys /
# reservation / full status, WRITE from unregistered P3 (RESERVATION CONFLICT) and from
# registrant P2, READ from P3, preempt P1 from P2, clear.  Prints a transcript with device
# names replaced by P1..Pn, so transcripts of different backends compare line by line;
# tests/vm/expected/lio-kernel-pr.txt is LIO's own PR emulation's transcript.
set -u
read -r -a paths <<<"${TCMU_PR_PATHS:?no TCMU_PR_PATHS: run through tests/vm/run-in-vm}"
((${#paths[@]} >= 3)) || { echo "need 3 paths" >&2; exit 2; }
P1=${paths[0]} P2=${paths[1]} P3=${paths[2]}
sed_names=()
for i in "${!paths[@]}"; do sed_names+=(-e "s|${paths[$i]}|P$((i + 1))|g"); done

step() {  # step LABEL CMD...: run, print output and exit status with stable device names
    echo "## $1"
    shift
    echo "\$ $*" | sed "${sed_names[@]}"
    "$@" 2>&1 | sed "${sed_names[@]}"
    echo "exit=${PIPESTATUS[0]}"
}
write1() { sg_raw -s 512 -i /dev/zero "$1" 2a 00 00 00 00 00 00 00 01 00; }
read1() { sg_raw -r 512 -o /dev/null "$1" 28 00 00 00 00 00 00 00 01 00; }

step "keys, none yet" sg_persist -n -i -k "$P1"
step "register 0x1 via P1" sg_persist -n -o -G -S 0x1 "$P1"
step "register 0x2 via P2" sg_persist -n -o -G -S 0x2 "$P2"
step "keys" sg_persist -n -i -k "$P1"
step "reserve type 5 via P1" sg_persist -n -o -R -K 0x1 --prout-type=5 "$P1"
step "reservation" sg_persist -n -i -r "$P2"
step "full status" sg_persist -n -i -s "$P1"
step "WRITE via unregistered P3" write1 "$P3"
step "READ via unregistered P3" read1 "$P3"
step "WRITE via registrant P2" write1 "$P2"
step "reserve again via P2 (conflict)" sg_persist -n -o -R -K 0x2 --prout-type=5 "$P2"
step "preempt 0x1 via P2" sg_persist -n -o -P -K 0x2 -S 0x1 --prout-type=5 "$P2"
step "keys via P1 (unit attention expected)" sg_persist -n -i -k "$P1"
step "keys via P1" sg_persist -n -i -k "$P1"
step "reservation" sg_persist -n -i -r "$P1"
step "WRITE via preempted P1" write1 "$P1"
step "clear via P2" sg_persist -n -o -C -K 0x2 "$P2"
step "keys" sg_persist -n -i -k "$P1"
step "reservation" sg_persist -n -i -r "$P1"
step "WRITE via P3" write1 "$P3"
