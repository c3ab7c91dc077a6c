#!/bin/bash
# A one-node SLURM cluster on this machine, for the tests marked `slurm` (tests/test_slurm.py).
#
#   tests/slurm/cluster.sh start    install slurm-wlm and munge if missing (root, apt-get), write the
#                                   configuration, start munged, slurmctld and slurmd, wait for the node
#   tests/slurm/cluster.sh status   exit 0 when the cluster answers and its node is up
#   tests/slurm/cluster.sh stop     cancel its jobs, stop the daemons it started (by their pid files)
#
# Each subcommand is idempotent. Two partitions: `debug` (the default) and `urgent`, whose higher
# PriorityTier preempts debug's jobs by requeueing them, as a cluster's preemption does.
# The configuration goes to /etc/slurm/slurm.conf, where every SLURM command finds it, and starts
# with the line $MARK. A slurm.conf without that line belongs to someone else: start refuses to
# touch it (and its cluster) and exits 1.
# Failures print one line, "cluster.sh: ...", and exit non-zero.
set -uo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by elth's tests/slurm/cluster.sh"
RUN=/run/elth-slurm              # the pid files of the daemons this script started
STATE=/var/lib/elth-slurm        # spool directories and logs
MUNGE_PID=/run/munge/munged.elth.pid

fail() { echo "cluster.sh: $*" >&2; exit 1; }

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -N -o %t 2>/dev/null | head -n 1; }

install() {
    command -v slurmctld > /dev/null && command -v slurmd > /dev/null && command -v munged > /dev/null && return
    [ "$(id -u)" -eq 0 ] || fail "slurm-wlm or munge is not installed, and installing it needs root"
    command -v apt-get > /dev/null || fail "slurm-wlm or munge is not installed, and there is no apt-get"
    echo "installing slurm-wlm and munge"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } > /dev/null \
        || fail "apt-get install slurm-wlm munge failed"
}

write_conf() {
    if [ -e "$CONF" ] && [ "$(head -n 1 "$CONF")" != "$MARK" ]; then
        fail "$CONF was not written by this script: not touching another cluster's configuration"
    fi
    local host mem
    host=$(hostname -s)
    mem=$(( $(free -m | awk '/Mem:/{print $2}') - 1024 ))
    mkdir -p /etc/slurm "$RUN" "$STATE/ctld" "$STATE/d" "$STATE/log"
    # CPUs=8 whatever the machine has (config_overrides keeps slurmd from draining the node for it):
    # the tests' jobs use one thread each and should run side by side, not queue behind each other.
    cat > "$CONF" <<CONF
$MARK
ClusterName=elth-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$host CPUs=8 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=10
CONF
}

start_munge() {
    munge -n < /dev/null 2>/dev/null | unmunge > /dev/null 2>&1 && return  # one is running already
    mkdir -p /run/munge /etc/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key /run/munge
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" || fail "munged did not start"
}

start() {
    local t0
    t0=$(date +%s%N)
    if status > /dev/null 2>&1; then echo "cluster already up"; return; fi
    [ "$(id -u)" -eq 0 ] || fail "starting the cluster needs root"
    install
    running "$RUN/slurmctld.pid" || running "$RUN/slurmd.pid" || write_conf
    start_munge
    # -c: no jobs of an earlier session come back.
    running "$RUN/slurmctld.pid" || /usr/sbin/slurmctld -c || fail "slurmctld did not start: see $STATE/log"
    running "$RUN/slurmd.pid" || /usr/sbin/slurmd || fail "slurmd did not start: see $STATE/log"
    for _ in $(seq 300); do
        [ "$(node_state)" = idle ] && { echo "cluster up in $(( ($(date +%s%N) - t0) / 1000000 )) ms"; sinfo; return; }
        sleep 0.1
    done
    fail "the node is not idle after 30 s (state: $(node_state)); see $STATE/log"
}

status() {
    scontrol ping > /dev/null 2>&1 || { echo "no slurmctld answers"; return 1; }
    local state
    state=$(node_state)
    case "$state" in
        idle|mix|alloc) sinfo ;;
        *) echo "the node is ${state:-missing}"; return 1 ;;
    esac
}

stop() {
    if running "$RUN/slurmctld.pid"; then
        squeue -h -o %A | xargs -r scancel  # its jobs end with the cluster
        sleep 1
    fi
    local f pid
    for f in "$RUN/slurmd.pid" "$RUN/slurmctld.pid" "$MUNGE_PID"; do
        running "$f" || continue
        pid=$(cat "$f")
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$f"
    done
    echo "cluster stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
