#!/bin/bash
# Runs cross_gateway.py with udev's event queue held: udev re-probes a disk that was closed
# after writing (its inotify watch), and those reads would take the unit attentions the checks
# expect on their very next command.
set -u
if pgrep -x systemd-udevd >/dev/null; then
    udevadm settle -t 60 || true
    udevadm control --stop-exec-queue
    trap 'udevadm control --start-exec-queue' EXIT
fi
python3 "$(dirname "$0")/cross_gateway.py" "$@"
