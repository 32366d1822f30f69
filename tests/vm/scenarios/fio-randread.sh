#!/bin/bash
# 4 KiB random reads, queue depth 16, through ONE path (the first of TCMU_PR_PATHS), for
# ${FIO_SECONDS:-20} s; prints "iops=N bw_kib=N lat_mean_us=N".  The data-path yardstick:
# run it on loopback-mpath with --backend ours, tcmu-runner and lio-fileio.
set -eu
read -r -a paths <<<"${TCMU_PR_PATHS:?no TCMU_PR_PATHS: run through tests/vm/run-in-vm}"
fio --name=randread --filename="${paths[0]}" --rw=randread --bs=4k --iodepth=16 \
    --ioengine=libaio --direct=1 --time_based --runtime="${FIO_SECONDS:-20}" --size=200M \
    --output-format=terse --terse-version=3 \
    | awk -F';' '{printf "iops=%s bw_kib=%s lat_mean_us=%.0f\n", $8, $7, $40}'
