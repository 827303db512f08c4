#!/usr/bin/env bash
# Install and start a one-node SLURM cluster with a fake GPU on this machine (Debian), for the test of
# the pipeline's SLURM path. Idempotent: returns at once when the cluster already answers with this
# configuration.
# Recipe and its pitfalls: shared/reference/pipeline.md §3 (munge is required; cgroup plugins do not
# work in a sandbox; a gres.conf without File= leaves the node INVAL).
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
H=$(hostname -s)
CPUS=$(nproc)
CONF=$(cat <<CONF
ClusterName=localcluster
SlurmctldHost=$H
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
# A job that requeues itself at its time limit (tests/pipeline/test_time_limit.py: 1-minute slices) waits
# cred_expire + 1 s before it may start again and then for the main scheduler's next pass (defaults: 120 s
# and 60 s, ~3 min per slice); a real cluster's minutes per 24-hour slice do not matter, a test's do.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=5,bf_interval=5
GresTypes=gpu
NodeName=$H CPUs=$CPUS RealMemory=8000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
)

if command -v sinfo >/dev/null && sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
  [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" = "$CONF" ] && exit 0
  # Up, but started with a configuration this script no longer writes (an older version of it): slurmctld
  # reads cred_expire only when it starts, so it is stopped here and started below with the new one (its
  # saved state keeps the queued and running jobs; slurmd and munged stay up).
  $SUDO kill "$(cat /run/slurmctld.pid)"
  for _ in $(seq 1 60); do pgrep -x slurmctld >/dev/null || break; sleep 0.5; done
fi
if ! command -v slurmctld >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

$SUDO mkdir -p /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/munge /etc/slurm
$SUDO chown munge:munge /run/munge
$SUDO chown -R slurm:slurm /var/lib/slurm /var/log/slurm
printf '%s\n' "$CONF" | $SUDO tee /etc/slurm/slurm.conf >/dev/null
# Two fake GPUs (any two device files), so that a run on resources.train.gpus: 2 can be scheduled.
printf 'AutoDetect=off\nNodeName=%s Name=gpu File=/dev/null\nNodeName=%s Name=gpu File=/dev/zero\n' "$H" "$H" \
  | $SUDO tee /etc/slurm/gres.conf >/dev/null

pgrep -x munged >/dev/null || $SUDO runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld >/dev/null || $SUDO /usr/sbin/slurmctld
sleep 2
pgrep -x slurmd >/dev/null || $SUDO /usr/sbin/slurmd
for _ in $(seq 1 30); do
  state=$(sinfo -h -o %t 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mix|alloc) echo "SLURM cluster up: $(sinfo -h)"; exit 0 ;;
    drain*|inval*|down*) $SUDO scontrol update nodename="$H" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "SLURM did not come up; see /var/log/slurm" >&2
exit 1
