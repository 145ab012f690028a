#!/usr/bin/env bash
# A single-node SLURM cluster for the tests, from Debian packages, without systemd.
#
#   tests/slurm/cluster.sh start    install what is missing, start munge, MariaDB, slurmdbd,
#                                   slurmctld and slurmd, register cluster/account/user; prints
#                                   `export SLURM_CONF=...` (every client command needs it)
#   tests/slurm/cluster.sh stop     stop the daemons this script started
#   tests/slurm/cluster.sh status   sinfo + the daemons' pids
#
# State, logs and the database live under $AEROSPLAT_SLURM_DIR (default: a folder in the system temp
# dir). slurm.conf and gres.conf are also copied to /etc/slurm (marked as ours), because srun inside a
# job runs with SLURM_* variables stripped by Snakemake's jobstep plugin and so reads the default
# path; an /etc/slurm/slurm.conf that is not ours is never replaced (the script stops and says so),
# and `stop` removes ours. The node advertises one GPU (gres.conf points at /dev/null) so that jobs
# asking for `--gpus=1` are accepted on a CPU-only machine: that tests the request, not a GPU.
# Daemons run as the calling user (root in CI); ports are configurable for machines that already
# run a SLURM: AEROSPLAT_SLURM_PORT_BASE (default 6817: slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB).
set -euo pipefail

DIR=${AEROSPLAT_SLURM_DIR:-${TMPDIR:-/tmp}/aerosplat-slurm}
PORT=${AEROSPLAT_SLURM_PORT_BASE:-6817}
CLUSTER=aerosplat
ACCOUNT=aerosplat
PARTITION=test
ETC=$DIR/etc
RUN=$DIR/run
LOG=$DIR/log
export SLURM_CONF=$ETC/slurm.conf
PACKAGES="munge mariadb-server slurmctld slurmd slurmdbd slurm-client"
SYSTEM_ETC=/etc/slurm
MARKER="# written by aerosplat tests/slurm/cluster.sh"

say() { echo "[slurm-test] $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else
        die "needs root (or password-less sudo) to run: $*"; fi
}

install_packages() {
    local missing="" p
    for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install:$missing"
    say "apt-get install:$missing"
    # Debian's maintainer scripts try to start the daemons; there is no init system to do it here.
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# pid file -> pid, only if that pid still runs the expected program (pids are reused).
live_pid() {
    local pidfile=$1 comm=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$comm" ] && echo "$pid"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    local end=$(( $(date +%s) + seconds ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || die "$what did not come up within ${seconds}s (logs: $LOG)"
        sleep 0.5
    done
}

write_config() {
    local host cpus mem user
    host=$(hostname -s)
    user=$(id -un)
    cpus=$(nproc)
    # What slurmd itself measures; a RealMemory above it would drain the node.
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mem=${mem:-$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))}
    mkdir -p "$ETC" "$RUN" "$LOG" "$DIR/state" "$DIR/spool"
    cat > "$ETC/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups without systemd: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, every job takes the whole node's memory and jobs run one at a time.
DefMemPerCPU=1000
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    echo "NodeName=$host Name=gpu File=/dev/null" > "$ETC/gres.conf"
    cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=$user
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"
    local f
    for f in slurm.conf gres.conf; do
        if [ -e "$SYSTEM_ETC/$f" ] && ! grep -qxF "$MARKER" "$SYSTEM_ETC/$f"; then
            die "$SYSTEM_ETC/$f exists and was not written by this script: this machine has its own SLURM set-up, which the test cluster would replace; run the SLURM tests on a machine without one"
        fi
    done
    as_root mkdir -p "$SYSTEM_ETC"
    for f in slurm.conf gres.conf; do
        { echo "$MARKER"; cat "$ETC/$f"; } | as_root tee "$SYSTEM_ETC/$f" >/dev/null
    done
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi  # a munged already answers
    [ -s /etc/munge/munge.key ] || as_root mungekey --create
    as_root mkdir -p /run/munge
    as_root chown munge:munge /run/munge 2>/dev/null || true
    # Debian's munged runs as the munge user; started by root it must be told to drop to it.
    if [ "$(id -u)" = 0 ] && id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        as_root munged --force
    fi
    wait_for 10 munged bash -c 'munge -n | unmunge'
}

start_mariadb() {
    local data=$DIR/mysql
    if [ -n "$(live_pid "$RUN/mariadbd.pid" mariadbd)" ]; then return 0; fi
    if [ ! -d "$data/mysql" ]; then
        mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$data" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed (see $LOG/mariadb-install.log)"
    fi
    mariadbd --no-defaults --user="$(id -un)" --datadir="$data" --socket="$RUN/mysql.sock" \
        --port=$((PORT + 3)) --bind-address=127.0.0.1 --pid-file="$RUN/mariadbd.pid" \
        --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb --no-defaults --socket="$RUN/mysql.sock" -u root -e 'select 1'
    mariadb --no-defaults --socket="$RUN/mysql.sock" -u root <<'EOF'
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_daemon() {  # start_daemon NAME READY-COMMAND...
    local name=$1; shift
    if [ -n "$(live_pid "$RUN/$name.pid" "$name")" ]; then return 0; fi
    # All three find their configuration through SLURM_CONF (slurmdbd.conf sits beside slurm.conf).
    "$name" >"$LOG/$name.out" 2>&1 || die "$name did not start (see $LOG/$name.log and $LOG/$name.out)"
    wait_for 30 "$name" "$@"
}

node_idle() { sinfo -h -N -o '%t' | grep -qE '^(idle|mix|alloc)'; }

start() {
    install_packages
    write_config
    start_munge
    start_mariadb
    start_daemon slurmdbd sacctmgr -n list cluster
    # sacctmgr needs slurm.conf; the cluster must exist in the database before slurmctld registers.
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" description=tests organization=aerosplat \
        >/dev/null 2>&1 || true
    sacctmgr -i -Q add user "$(id -un)" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true
    start_daemon slurmctld scontrol ping
    start_daemon slurmd node_idle
    sacctmgr -n -P list association user="$(id -un)" format=account | grep -qx "$ACCOUNT" \
        || die "no association for $(id -un) in account $ACCOUNT (see $LOG/slurmdbd.log)"
    say "cluster '$CLUSTER' up: partition '$PARTITION', account '$ACCOUNT', $(nproc) CPUs, 1 GPU (gres on /dev/null)"
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
    local name pid
    for name in slurmd slurmctld slurmdbd mariadbd; do
        if pid=$(live_pid "$RUN/$name.pid" "$name"); then
            kill "$pid"
            for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
        fi
    done
    for name in slurm.conf gres.conf; do
        if [ -f "$SYSTEM_ETC/$name" ] && grep -qxF "$MARKER" "$SYSTEM_ETC/$name"; then
            as_root rm -f "$SYSTEM_ETC/$name"
        fi
    done
    say "stopped (munged left running: other services may use it)"
}

status() {
    local name
    for name in mariadbd slurmdbd slurmctld slurmd; do
        echo "$name: $(live_pid "$RUN/$name.pid" "$name" || echo 'not running')"
    done
    sinfo
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
