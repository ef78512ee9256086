#!/usr/bin/env bash
# A single-node SLURM on 127.0.0.1 for the workflow test tests/test_slurm.py (idempotent; needs root).
# Installs Debian's slurm-wlm + munge, writes slurm.conf (one node, partitions "cpu" and "gpu", both
# CPU-only: the test maps the GPU rules' partition key onto "gpu"), accounting to a text file so sacct
# works without slurmdbd, and starts munged, slurmctld and slurmd. Exits 0 when the cluster answers
# `sinfo`; prints why not and exits 1 otherwise (the test then skips with that reason).
set -uo pipefail
log() { echo "slurm_setup: $*"; }
if [ "$(id -u)" != 0 ]; then log "not root: cannot install or start SLURM"; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null) || { log "apt-get install slurm-wlm munge failed"; exit 1; }
fi
CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
NEW_CONF=$(mktemp)
cat > "$NEW_CONF" <<CONF
ClusterName=slidesnake-ci
SlurmctldHost=localhost(127.0.0.1)
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmUser=root
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MpiDefault=none
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=5
MinJobAge=600
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
PartitionName=gpu Nodes=localhost Default=NO MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
# Count-only GPUs: the node has no GPU hardware, but SLURM accepts and schedules --gpus=1 jobs on it, so the
# test sees the GPU request the profile makes (the "gpu" partition is CPU-only underneath).
for i in 0 1; do [ -e /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3; done  # null-like devices stand in for GPUs
echo "Name=gpu File=/dev/fakegpu[0-1]" > "$CONF_DIR/gres.conf.new"
if ! cmp -s "$NEW_CONF" "$CONF_DIR/slurm.conf" || ! cmp -s "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf"; then
  mv "$NEW_CONF" "$CONF_DIR/slurm.conf"; mv "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf"
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do  # a changed config needs fresh daemons
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null && sleep 2
  done
else
  rm -f "$NEW_CONF" "$CONF_DIR/gres.conf.new"
fi
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key; chmod 700 /etc/munge
pgrep -x munged >/dev/null || runuser -u munge -- munged 2>/dev/null || munged --force || { log "munged did not start"; exit 1; }
pgrep -x slurmctld >/dev/null || slurmctld || { log "slurmctld did not start (see /var/log/slurm/slurmctld.log)"; exit 1; }
pgrep -x slurmd >/dev/null || slurmd -N localhost || { log "slurmd did not start (see /var/log/slurm/slurmd.log)"; exit 1; }
for _ in $(seq 30); do
  if sinfo -h -o "%P %T" 2>/dev/null | grep -q "idle\|mixed\|alloc"; then
    log "up: $(sinfo -h -o '%P %T %c' | tr '\n' ' ') (slurm $(sinfo -V | awk '{print $2}'))"
    exit 0
  fi
  scontrol update nodename=localhost state=undrain >/dev/null 2>&1 || scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  sleep 1
done
log "the node did not come up: $(sinfo 2>&1 | tr '\n' ' ')"
exit 1
