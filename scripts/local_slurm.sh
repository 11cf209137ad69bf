#!/usr/bin/env bash
# A private single-node Slurm (slurmctld + slurmd + munged) on 127.0.0.1, everything inside DIR.
#
#   scripts/local_slurm.sh start DIR   write DIR/{slurm,gres,cgroup}.conf and a MUNGE key, start munged,
#                                      slurmctld and slurmd, wait until the node is idle
#   scripts/local_slurm.sh stop DIR    stop the three daemons by the pids in DIR/*.pid
#   scripts/local_slurm.sh env DIR     print the environment a client needs (export lines)
#
# Clients use SLURM_CONF=DIR/slurm.conf. The node pretends to have 4 GPUs (gres without devices).
# Meant for tests, run as root inside a loopback-only network namespace (tests/cluster.py does that):
# the daemons use the default ports 6817/6818 unless SLURMCTLD_PORT / SLURMD_PORT are set.
# Needs root (SlurmUser=root) and the Debian packages slurmctld slurmd slurm-client munge
# (scripts/install_slurm.sh).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

usage() { echo "usage: $0 start|stop|env DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION=$1
DIR=$2
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
NODE=$(hostname -s)
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
GPUS=${SLURM_LOCAL_GPUS:-4}
# a little under what slurmd will measure (a node reporting less than RealMemory is set INVAL)
MEMORY_MB=${SLURM_LOCAL_MEMORY_MB:-$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-30}
SOCKET="$DIR/munge/munge.socket"

log() { echo "local_slurm: $*"; }

write_config() {
    mkdir -p "$DIR/munge" "$DIR/state" "$DIR/spool" "$DIR/log"
    chmod 755 "$DIR/munge"  # munged wants the socket dir traversable by all
    # one-node cluster; the node is this host's short name, reached at 127.0.0.1
    cat > "$DIR/slurm.conf" <<CONF
ClusterName=localtest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=${SLURMD_DEBUG:-info}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
GresTypes=gpu
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
LaunchParameters=use_interactive_step
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    # pretend GPUs: slurmd drops a gpu gres without File= ("Removing file-less GPU") and wants character
    # devices (a plain file is still counted but logs an error and gets no CUDA_VISIBLE_DEVICES), so
    # DIR/dev/gpu0..N-1 are copies of /dev/null (c 1:3); nothing opens them
    mkdir -p "$DIR/dev"
    local i
    for ((i = 0; i < GPUS; i++)); do
        [ -c "$DIR/dev/gpu$i" ] || { rm -f "$DIR/dev/gpu$i"; mknod -m 666 "$DIR/dev/gpu$i" c 1 3 2>/dev/null || : > "$DIR/dev/gpu$i"; }
    done
    cat > "$DIR/gres.conf" <<CONF
AutoDetect=off
NodeName=$NODE Name=gpu File=$DIR/dev/gpu[0-$((GPUS - 1))]
CONF
    # not used by linuxproc/task-none, but slurmd reads it when present; keep it harmless
    cat > "$DIR/cgroup.conf" <<CONF
CgroupPlugin=autodetect
IgnoreSystemd=yes
CONF
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$DIR/munge/munge.key"
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

node_idle() { [ "$(sinfo -h -n "$NODE" -o %T 2>/dev/null)" = idle ]; }

fail() {
    log "$*"
    for f in "$DIR"/log/*.log; do echo "--- $f"; tail -n 20 "$f"; done >&2
    stop
    exit 1
}

# the daemons must not be reachable from outside: refuse to start where more than `lo` exists
check_network() {
    local interfaces
    interfaces=$(awk -F: 'NR > 2 {gsub(/ /, "", $1); print $1}' /proc/net/dev | tr '\n' ' ')
    if [ "$interfaces" != "lo " ] && [ "${LOCAL_SLURM_ANY_NETWORK:-0}" != 1 ]; then
        log "refusing to start: this network namespace has interfaces: $interfaces(run inside" \
            "\`unshare -n\` with only lo, or set LOCAL_SLURM_ANY_NETWORK=1)"
        exit 1
    fi
    # with 127.0.0.1 as its only IPv4 address, getaddrinfo(AF_INET, AI_ADDRCONFIG) fails for every
    # name (glibc does not count 127.0.0.1 as configured), and Slurm resolves that way: add 127.0.0.2
    if [ "$interfaces" = "lo " ] && ! ip -o -4 addr show dev lo | grep -qv ' 127\.0\.0\.1/'; then
        ip link set lo up
        ip addr add 127.0.0.2/8 dev lo
    fi
}

start() {
    check_network
    write_config
    export SLURM_CONF="$DIR/slurm.conf"
    if alive "$DIR/munged.pid" || alive "$DIR/slurmctld.pid" || alive "$DIR/slurmd.pid"; then
        log "already running in $DIR"; exit 1
    fi
    munged --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" --force
    wait_for 10 munge -n -S "$SOCKET" || fail "munged did not answer on $SOCKET"
    slurmctld -f "$SLURM_CONF" -i
    wait_for 15 scontrol ping || fail "slurmctld did not answer"
    slurmd -f "$SLURM_CONF" -N "$NODE"
    wait_for "$TIMEOUT" node_idle || fail "node $NODE not idle after ${TIMEOUT}s: $(sinfo -h -o '%T %E' 2>&1)"
    log "up: node $NODE idle ($CPUS CPUs, gpu:$GPUS), SLURM_CONF=$SLURM_CONF"
}

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        [ -s "$DIR/$name.pid" ] || continue
        pid=$(cat "$DIR/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait_for 10 sh -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
            log "stopped $name ($pid)"
        fi
        rm -f "$DIR/$name.pid"
    done
}

case $ACTION in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
    *) usage ;;
esac
