#!/usr/bin/env bash
# A SLURM test cluster on this machine: two nodes (n1, n2) on this host, one partition,
# for hdsr's `slurm` tests (tests/cluster/). As root on a Debian-like machine:
#
#   tests/cluster/slurm.sh up       install slurmctld, slurmd, slurm-client and munge if
#                                   missing, write the config, start munge, slurmctld and
#                                   two slurmd, wait until both nodes are idle (idempotent)
#   tests/cluster/slurm.sh down     stop them (the config and state folder stay)
#   tests/cluster/slurm.sh status   print the nodes, exit 0 when both are idle
#
# `make slurm-up` / `make slurm-down` run it. Without root or apt-get it says why and
# does nothing (exit 0), and the slurm tests skip. The cluster is named `hdsrtest`: the
# tests use a scheduler only when it has that name, never a real cluster's.
# No cgroups, no accounting (sacct is unavailable), proctrack/linuxproc, task/none; state
# and logs under $HDSR_SLURM_DIR (default /tmp/hdsr-slurm).
set -uo pipefail

DIR=${HDSR_SLURM_DIR:-/tmp/hdsr-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by hdsr tests/cluster/slurm.sh"
CLUSTER=hdsrtest
CPUS=${HDSR_SLURM_CPUS:-8}   # per node: more than this host's cores, so jobs can share them
HOST=$(hostname -s)

say() { echo "slurm.sh: $*"; }

can_run() {
    if [ "$(id -u)" != 0 ]; then
        say "not root: the test cluster needs root (apt-get, munge, slurmd); doing nothing"
        return 1
    fi
    if ! command -v apt-get >/dev/null && ! command -v slurmctld >/dev/null; then
        say "no apt-get and no slurmctld: cannot install SLURM here; doing nothing"
        return 1
    fi
    return 0
}

install() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$DIR/apt.log" 2>&1; then
        apt-get update -q >>"$DIR/apt.log" 2>&1
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1 || {
            say "apt-get install ${missing[*]} failed (see $DIR/apt.log)"
            return 1
        }
    fi
}

write_config() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        say "$CONF exists and was not written by this script: refusing to replace it"
        return 1
    fi
    mkdir -p /etc/slurm "$DIR/state" "$DIR/log" "$DIR/spool/n1" "$DIR/spool/n2"
    cat >"$CONF.tmp" <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again after this many seconds (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# a job's time limit is enforced within seconds, and killed jobs go quickly
KillWait=5
MessageTimeout=20
InactiveLimit=0
MinJobAge=300
SchedulerParameters=sched_interval=2
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=16818 CPUs=$CPUS RealMemory=16000 State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=16819 CPUs=$CPUS RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if [ -f "$CONF" ] && cmp -s "$CONF.tmp" "$CONF"; then
        rm "$CONF.tmp"
    else
        mv "$CONF.tmp" "$CONF"
        CHANGED=1
    fi
    # node names resolve (Lightning's MASTER_ADDR is the first node's name)
    grep -qE '^127\.0\.0\.1[[:space:]].*\bn1\b' /etc/hosts || echo "127.0.0.1 n1 n2" >>/etc/hosts
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    fi
    id munge >/dev/null 2>&1 && chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    id munge >/dev/null 2>&1 && chown munge:munge /run/munge /var/lib/munge /var/log/munge
    if munge -n >/dev/null 2>&1; then
        return 0
    fi
    if id munge >/dev/null 2>&1; then
        su -s /bin/sh munge -c "/usr/sbin/munged" || /usr/sbin/munged --force
    else
        /usr/sbin/munged --force
    fi
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return 0; sleep 0.2; done
    say "munged did not start"
    return 1
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

status() {
    sinfo -h -N -o "%N %t" 2>/dev/null | sort -u
    local idle
    idle=$(sinfo -h -N -o "%N %t" 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc)/' | sort -u | wc -l)
    [ "$idle" -ge 2 ]
}

up() {
    can_run || exit 0
    mkdir -p "$DIR"
    install || exit 1
    write_config || exit 1
    start_munge || exit 1
    if [ "${CHANGED:-0}" = 1 ]; then  # a new config: daemons started with another restart
        stop_daemons
    fi
    running "$DIR/slurmctld.pid" || slurmctld -i || { say "slurmctld failed (see $DIR/log/slurmctld.log)"; exit 1; }
    for n in n1 n2; do
        running "$DIR/slurmd.$n.pid" || slurmd -N "$n" || { say "slurmd -N $n failed (see $DIR/log/slurmd.$n.log)"; exit 1; }
    done
    for _ in $(seq 60); do
        if status >/dev/null; then
            # a node left down by an earlier, killed cluster comes back
            scontrol update nodename=n1,n2 state=resume >/dev/null 2>&1 || true
            say "cluster $CLUSTER up: $(sinfo -h -N -o '%N:%t' | sort -u | tr '\n' ' ')"
            return 0
        fi
        sinfo -h -N -o "%N %t" 2>/dev/null | grep -qE "down|drain" &&
            scontrol update nodename=n1,n2 state=resume >/dev/null 2>&1
        sleep 1
    done
    say "the nodes did not become idle in 60 s:"
    sinfo 2>&1
    exit 1
}

stop_daemons() {
    for f in "$DIR"/slurmd.n1.pid "$DIR"/slurmd.n2.pid "$DIR"/slurmctld.pid; do
        running "$f" && kill "$(cat "$f")"
    done
    for _ in $(seq 50); do
        running "$DIR/slurmctld.pid" || running "$DIR/slurmd.n1.pid" || running "$DIR/slurmd.n2.pid" || break
        sleep 0.2
    done
}

down() {
    [ "$(id -u)" = 0 ] || { say "not root: nothing to stop"; exit 0; }
    stop_daemons
    say "stopped"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
