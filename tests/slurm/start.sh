#!/usr/bin/env bash
# A real one-node Slurm on this host, for the tests that submit cells through submitit (tests/slurm/).
#
# Why a real one: submitit's local executor does not run sbatch, squeue, scontrol or Slurm's memory kill, and
# those are what the Slurm launcher depends on (harness/run/slurm/). Debian's slurm-wlm (22.05) and munge are
# installed where missing (root and apt needed); the node is this host, with the CPUs and memory `slurmd -C`
# reports; no accounting (no slurmdbd): the launcher reads job states from squeue and scontrol.
#
# Memory is scheduled (select/cons_tres, CR_Core_Memory) and enforced (jobacct_gather/linux polled every second,
# OverMemoryKill), so a job past its --mem ends OUT_OF_MEMORY as on a cluster.
#
# Idempotent: a second run finds the daemons up and the node idle, and returns at once. Writes
# /etc/slurm/slurm.conf only when there is none, or when it is the one this script wrote (a marker line), so a
# machine with its own Slurm is never touched. Exits 0 when the node is idle, 1 (with the reason) otherwise;
# tests/slurm/conftest.py skips the Slurm tests when sinfo does not show it. tests/slurm/stop.sh stops all three.
set -uo pipefail
STATE=${VAEBENCH_SLURM_STATE:-/var/spool/vaebench-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by vaebench tests/slurm/start.sh"
say() { echo "slurm/start.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then say "not root: cannot start slurmctld and slurmd here"; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    if ! command -v apt-get >/dev/null; then say "slurm-wlm/munge missing and no apt-get"; exit 1; fi
    say "installing slurm-wlm and munge"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
        || { say "apt-get install slurm-wlm munge failed"; exit 1; }
fi

host=$(hostname -s)
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    say "$CONF exists and was not written by this script: use that cluster, not a test one"; exit 1
fi
node=$(slurmd -C | head -1)
case "$node" in NodeName=*) ;; *) say "slurmd -C printed no node line: $node"; exit 1 ;; esac
node="NodeName=$host ${node#NodeName=* }"
mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm
cat > "$CONF.tmp" <<CONFEOF
$MARK
ClusterName=vaebench-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
KillWait=5
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONFEOF
if ! cmp -s "$CONF.tmp" "$CONF"; then mv "$CONF.tmp" "$CONF"; changed=1; else rm -f "$CONF.tmp"; changed=0; fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# munge: its key, its run dir, the daemon as the munge user
[ -s /etc/munge/munge.key ] || mungekey --create >/dev/null 2>&1 || { say "cannot create the munge key"; exit 1; }
chown munge:munge /etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged || { say "munged did not start"; exit 1; }
fi

if [ "$changed" = 1 ]; then  # a new config: the daemons must read it
    for d in slurmd slurmctld; do alive "$STATE/$d.pid" && kill "$(cat "$STATE/$d.pid")"; done
    sleep 1
fi
alive "$STATE/slurmctld.pid" || slurmctld || { say "slurmctld did not start (see $STATE/slurmctld.log)"; exit 1; }
alive "$STATE/slurmd.pid" || slurmd || { say "slurmd did not start (see $STATE/slurmd.log)"; exit 1; }

for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -1)
    case "$state" in idle|mix|alloc) say "node $host is $state"; exit 0 ;; esac
    case "$state" in down*|drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 ;; esac
    sleep 0.5
done
say "node $host did not become idle in 30 s (sinfo: ${state:-no answer}; see $STATE/*.log)"
exit 1
