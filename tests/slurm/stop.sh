#!/usr/bin/env bash
# Stops what tests/slurm/start.sh started: slurmd, slurmctld and munged (by their pid files, never by name).
# Safe to run when none is running. Leaves the packages, the config and the state dir in place.
set -uo pipefail
STATE=${VAEBENCH_SLURM_STATE:-/var/spool/vaebench-slurm}
for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" /run/munge/munged.pid; do
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
done
exit 0
