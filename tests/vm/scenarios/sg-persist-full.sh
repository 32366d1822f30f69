#!/bin/bash
# The broad PR scenario through sg_persist/sg_raw on the layout's paths (TCMU_PR_PATHS, >= 4):
# capabilities, REGISTER / REGISTER AND IGNORE, every reservation type (1 3 5 6 7 8) with the
# READ and WRITE of a registered and of an unregistered non-holder path, RELEASE and the unit
# attention it queues, bad RELEASE, ALL_TG_PT (-Y), APTPL (-Z), SPEC_I_PT (-X), REGISTER AND
# MOVE (-M -X -Q, -U), PREEMPT, CLEAR, READ FULL STATUS.  Prints a transcript with device names
# replaced by P1..Pn, so transcripts of different backends compare line by line:
# tests/vm/expected/sg-persist-full.lio.txt is LIO's own PR emulation, .ours.txt ours.
# PREEMPT AND ABORT is left out on purpose: LIO deadlocks on it (docs/lio-comparison.md).
#
# multipathd is paused while it runs: its path checker sends TEST UNIT READY at random times
# and would take some of the unit attentions this transcript shows.  Unit attentions a step
# does not look at are drained silently (settle) so the next step starts from a quiet LU.
set -u
read -r -a paths <<<"${TCMU_PR_PATHS:?no TCMU_PR_PATHS: run through tests/vm/run-in-vm}"
((${#paths[@]} >= 4)) || { echo "need 4 paths" >&2; exit 2; }
P1=${paths[0]} P2=${paths[1]} P3=${paths[2]} P4=${paths[3]}
# tcm_loop initiator n is SAS address 0x5001405bb000000n; sg_persist wants its hex without 0x.
sas() { printf 'sas,5001405bb%07x' "$1"; }
sed_names=()
for i in "${!paths[@]}"; do sed_names+=(-e "s|${paths[$i]}\b|P$((i + 1))|g"); done

step() {  # step LABEL CMD...: run, print output and exit status with stable device names
    echo "## $1"
    shift
    echo "\$ $*" | sed "${sed_names[@]}"
    "$@" 2>&1 | sed "${sed_names[@]}"
    echo "exit=${PIPESTATUS[0]}"
}
write1() { sg_raw -s 512 -i /dev/zero "$1" 2a 00 00 00 00 00 00 00 01 00; }
read1() { sg_raw -r 512 -o /dev/null "$1" 28 00 00 00 00 00 00 00 01 00; }
rtpi() { sg_vpd -p 0x83 "$1" | awk '/Relative target port:/ {print $NF; exit}'; }
settle() {  # take every pending unit attention, print nothing
    for p in "${paths[@]}"; do
        for _ in 1 2 3 4; do sg_turs "$p" >/dev/null 2>&1 && break; done
    done
}
multipathd_was_up=0
if pgrep -x multipathd >/dev/null; then
    multipathd_was_up=1
    multipathd shutdown >/dev/null 2>&1
    for _ in $(seq 50); do pgrep -x multipathd >/dev/null || break; sleep 0.1; done
fi
trap '((multipathd_was_up)) && { pgrep -x multipathd >/dev/null || multipathd -s; }' EXIT
settle

step "capabilities" sg_persist -n -i -c "$P1"
step "keys, none yet" sg_persist -n -i -k "$P1"
step "register 0x1 via P1" sg_persist -n -o -G -S 0x1 "$P1"
step "register 0x2 via P2" sg_persist -n -o -G -S 0x2 "$P2"
step "register with a wrong key via P2 (conflict)" sg_persist -n -o -G -K 0x9 -S 0x3 "$P2"
step "register-and-ignore 0x4 via P4" sg_persist -n -o -I -S 0x4 "$P4"
step "register-and-ignore 0x44 via P4 (replaces)" sg_persist -n -o -I -S 0x44 "$P4"
step "keys after registrations" sg_persist -n -i -k "$P3"

for type in 1 3 5 6 7 8; do
    step "type $type: reserve via P1" sg_persist -n -o -R -K 0x1 --prout-type=$type "$P1"
    step "type $type: reservation" sg_persist -n -i -r "$P3"
    step "type $type: WRITE via holder P1" write1 "$P1"
    step "type $type: WRITE via registrant P2" write1 "$P2"
    step "type $type: READ via registrant P2" read1 "$P2"
    step "type $type: WRITE via unregistered P3" write1 "$P3"
    step "type $type: READ via unregistered P3" read1 "$P3"
    step "type $type: reserve other type via P2 (conflict)" \
        sg_persist -n -o -R -K 0x2 --prout-type=$((type == 1 ? 3 : 1)) "$P2"
    step "type $type: release with the wrong type via P1" \
        sg_persist -n -o -L -K 0x1 --prout-type=$((type == 1 ? 3 : 1)) "$P1"
    settle
    # All-registrants types: every registrant is a holder, so P2 may release.
    rel=$P1 relkey=0x1
    ((type >= 7)) && rel=$P2 relkey=0x2
    step "type $type: release via $( ((type >= 7)) && echo P2 || echo P1)" \
        sg_persist -n -o -L -K $relkey --prout-type=$type "$rel"
    step "type $type: TUR via P4 (unit attention for types 5-8)" sg_turs "$P4"
    settle
    step "type $type: reservation after release" sg_persist -n -i -r "$P3"
done

step "release when none is held" sg_persist -n -o -L -K 0x1 --prout-type=5 "$P1"
step "unregister P4" sg_persist -n -o -G -K 0x44 -S 0 "$P4"
step "register 0x4 via P4 with SPEC_I_PT for initiator 3 (another path's), APTPL" \
    sg_persist -n -o -G -Z -S 0x4 -X "$(sas 3)" "$P4"
step "capabilities (APTPL now active)" sg_persist -n -i -c "$P1"
step "register 0x3 via P3 with ALL_TG_PT (overlaps initiator 3 on port 4: conflict)" \
    sg_persist -n -o -G -Y -S 0x3 "$P3"
step "register-and-ignore 0x3 via P3" sg_persist -n -o -I -S 0x3 "$P3"
step "register 0x5 via P1 with SPEC_I_PT from a registered nexus (refused)" \
    sg_persist -n -o -G -K 0x1 -S 0x5 -X "$(sas 2)" "$P1"
step "keys after SPEC_I_PT for initiator 3" sg_persist -n -i -k "$P1"
step "full status after SPEC_I_PT for initiator 3" sg_persist -n -i -s "$P1"
step "reserve type 5 via P1" sg_persist -n -o -R -K 0x1 --prout-type=5 "$P1"
step "preempt holder 0x1 via P2" sg_persist -n -o -P -K 0x2 -S 0x1 --prout-type=5 "$P2"
step "TUR via P1 (unit attention expected)" sg_turs "$P1"
settle
step "full status after preempt" sg_persist -n -i -s "$P1"
step "WRITE via preempted P1" write1 "$P1"
step "preempt non-holder 0x3 via P2" sg_persist -n -o -P -K 0x2 -S 0x3 --prout-type=5 "$P2"
step "preempt with an unknown key (conflict)" \
    sg_persist -n -o -P -K 0x2 -S 0x77 --prout-type=5 "$P2"
step "keys after preempts" sg_persist -n -i -k "$P1"
step "clear via P2" sg_persist -n -o -C -K 0x2 "$P2"
step "TUR via P4 (unit attention expected)" sg_turs "$P4"
settle
step "keys after clear" sg_persist -n -i -k "$P1"
step "reservation after clear" sg_persist -n -i -r "$P1"
step "capabilities after clear" sg_persist -n -i -c "$P1"
step "WRITE via P3" write1 "$P3"
step "register-and-ignore 0x3 via P3 with ALL_TG_PT" sg_persist -n -o -I -Y -S 0x3 "$P3"
step "full status with ALL_TG_PT" sg_persist -n -i -s "$P1"
step "register 0x6 via unregistered P4 with SPEC_I_PT for registered initiator 3" \
    sg_persist -n -o -G -S 0x6 -X "$(sas 3)" "$P4"
step "keys after SPEC_I_PT" sg_persist -n -i -k "$P1"
step "clear via P3" sg_persist -n -o -C -K 0x3 "$P3"
settle

# REGISTER AND MOVE names the destination port by its relative target port identifier, as
# VPD page 0x83 of that port reports it (LIO reports 0 for every tcm_loop port, so it cannot
# move here: from this point on its transcript differs, see docs/lio-comparison.md).  The SA
# key equals the destination's key: whether a move replaces a registered destination's key is
# read differently by LIO and by us.
step "move: register 0x1, 0x2, 0x4 via P1, P2, P4" \
    eval 'for i in 1 2 4; do sg_persist -n -o -I -S 0x$i "${paths[i-1]}" || exit; done'
step "move: reserve type 5 via P1" sg_persist -n -o -R -K 0x1 --prout-type=5 "$P1"
step "move: to registered initiator 2 on its port" \
    sg_persist -n -o -M -K 0x1 -S 0x2 --prout-type=5 -X "$(sas 2)" -Q "$(rtpi "$P2")" "$P1"
settle
step "move: reservation" sg_persist -n -i -r "$P1"
step "move: from a non-holder (conflict)" \
    sg_persist -n -o -M -K 0x1 -S 0x1 --prout-type=5 -X "$(sas 4)" -Q "$(rtpi "$P4")" "$P1"
step "move: release via P2" sg_persist -n -o -L -K 0x2 --prout-type=5 "$P2"
settle
step "move: reserve type 1 via P1" sg_persist -n -o -R -K 0x1 --prout-type=1 "$P1"
step "move: to initiator 4 on its port, unregister the source" \
    sg_persist -n -o -M -U -K 0x1 -S 0x4 --prout-type=1 -X "$(sas 4)" -Q "$(rtpi "$P4")" "$P1"
settle
step "move: full status" sg_persist -n -i -s "$P2"
step "move: WRITE via new holder P4" write1 "$P4"
step "move: WRITE via moved-away P1" write1 "$P1"
step "move: clear via P2" sg_persist -n -o -C -K 0x2 "$P2"
settle
step "move: keys" sg_persist -n -i -k "$P1"
