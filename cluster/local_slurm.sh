#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for testing the `profiles/slurm` workflow profile.
#
#   cluster/local_slurm.sh start [DIR]   start munged, slurmctld and slurmd with state under DIR
#                                        (default: a new mktemp -d); wait until the node is idle;
#                                        print `export KEY=VALUE` lines on stdout
#   cluster/local_slurm.sh status DIR    sinfo and squeue of that cluster
#   cluster/local_slurm.sh stop DIR      cancel its jobs, stop its daemons by pid, keep DIR
#
#   eval "$(cluster/local_slurm.sh start)"          # sets SLURM_CONF, LOCAL_SLURM_DIR, ...
#   sbatch --gpus=1 --wrap 'echo $CUDA_VISIBLE_DEVICES'
#   cluster/local_slurm.sh stop "$LOCAL_SLURM_DIR"
#
# Needs root and Debian's packages: apt-get install -y slurmctld slurmd slurm-client munge
# (Slurm 22.05). Nothing outside DIR is written: munged gets its own key and socket, the daemons
# listen on free ports, so the cluster does not clash with a system munge or SLURM.
#
# What is real and what is not:
# - sbatch/srun/squeue/scontrol, scheduling, GRES accounting and the job environment
#   (SLURM_JOB_ID, CUDA_VISIBLE_DEVICES from the GPU GRES) are real SLURM.
# - The node advertises LOCAL_SLURM_GPUS (default 2) GPUs backed by fake character devices
#   (copies of /dev/null: SLURM needs device files, a plain file does not work), so `--gpus=1`
#   is accepted and a job gets CUDA_VISIBLE_DEVICES, but no CUDA device exists: jobs fall back
#   to the CPU.
# - The node advertises LOCAL_SLURM_MEM_MB (default 262144) MB of memory whatever the machine
#   has (SlurmdParameters=config_overrides), so the workflow's real memory requests (and their
#   doubling on a retry) are accepted. Nothing enforces memory (no cgroups). LOCAL_SLURM_CPUS
#   (default: the machine's CPUs) may likewise advertise more CPUs than exist, so that more
#   short jobs run at once.
# - No slurmdbd: sacct has no data; clients must poll with squeue (MinJobAge=3600 keeps finished
#   jobs visible to squeue and scontrol for an hour).
# - The config is DIR/slurm.conf, not /etc/slurm/slurm.conf. SLURM_CONF alone does not reach
#   every client: snakemake-executor-plugin-slurm-jobstep drops all SLURM_* variables but the
#   job's identity before its inner `srun`. So `start` also writes DIR/bin/<tool> wrappers that set
#   SLURM_CONF and exec the real tool; put DIR/bin first on PATH (sbatch --export=ALL carries
#   PATH into the jobs).
set -euo pipefail

PARTITION="${LOCAL_SLURM_PARTITION:-ci}"
N_GPUS="${LOCAL_SLURM_GPUS:-2}"
N_CPUS="${LOCAL_SLURM_CPUS:-}" # default: the machine's
MEM_MB="${LOCAL_SLURM_MEM_MB:-262144}"
START_TIMEOUT="${LOCAL_SLURM_START_TIMEOUT:-30}"

log() { echo "local_slurm: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

need_tools() {
    local missing=()
    for tool in munged mungekey slurmctld slurmd sbatch squeue sinfo scontrol scancel; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        die "missing ${missing[*]}: apt-get install -y slurmctld slurmd slurm-client munge"
    fi
    [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd launches jobs, mknod makes fake GPUs)"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 40000))
        if ! port_in_use "$port" && ! port_in_use "$((port + 1))"; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port pair found"
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# Run a daemon in the foreground, detached from this script (setsid), and record its pid.
spawn() {
    local name=$1
    shift
    setsid "$@" >"$DIR/log/$name.out" 2>&1 </dev/null &
    echo $! >"$DIR/pid/$name"
}

wait_for() {
    local what=$1 check=$2
    for _ in $(seq $((START_TIMEOUT * 5))); do
        if eval "$check"; then
            return 0
        fi
        sleep 0.2
    done
    die "$what did not come up within ${START_TIMEOUT}s; see $DIR/log/"
}

write_config() {
    local host cpus port
    host=$(hostname -s)
    cpus=$N_CPUS
    [[ -n $cpus ]] || cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n1)
    [[ -n $cpus ]] || cpus=$(nproc)
    port=$(free_port)
    mkdir -p "$DIR"/{state,spool,log,pid,dev,munge}
    for ((i = 0; i < N_GPUS; i++)); do
        [[ -c $DIR/dev/fakegpu$i ]] || mknod -m 666 "$DIR/dev/fakegpu$i" c 1 3
    done
    cat >"$DIR/slurm.conf" <<EOF
# Single-node test cluster written by cluster/local_slurm.sh; state lives in $DIR.
ClusterName=localci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.sock
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/state/slurmctld.pid
SlurmdPidFile=$DIR/spool/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
DefMemPerCPU=1024
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$MEM_MB Gres=gpu:$N_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mkdir -p "$DIR/bin"
    local tool real
    for tool in sbatch srun squeue scontrol scancel sinfo sacct sacctmgr sshare; do
        real=$(command -v "$tool" || true)
        [[ -n $real ]] || continue
        printf '#!/bin/sh\nSLURM_CONF=%s/slurm.conf exec %s "$@"\n' "$DIR" "$real" >"$DIR/bin/$tool"
        chmod +x "$DIR/bin/$tool"
    done
    if ((N_GPUS > 0)); then
        echo "NodeName=$host Name=gpu File=$DIR/dev/fakegpu[0-$((N_GPUS - 1))]" >"$DIR/gres.conf"
    else
        : >"$DIR/gres.conf"
        sed -i 's/ Gres=gpu:0//' "$DIR/slurm.conf"
    fi
}

start() {
    need_tools
    DIR=${1:-$(mktemp -d /tmp/local-slurm.XXXXXX)}
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    for name in munged slurmctld slurmd; do
        if pid_alive "$(cat "$DIR/pid/$name" 2>/dev/null || true)"; then
            die "$name of a cluster in $DIR is still running; stop it first"
        fi
    done
    write_config
    export SLURM_CONF=$DIR/slurm.conf

    [[ -f $DIR/munge/munge.key ]] || mungekey --create --keyfile="$DIR/munge/munge.key" --force
    chmod 600 "$DIR/munge/munge.key"
    spawn munged munged --foreground --force \
        --socket="$DIR/munge/munge.sock" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed" \
        --log-file="$DIR/log/munged.log"
    wait_for munged "[[ -S '$DIR/munge/munge.sock' ]]"

    spawn slurmctld slurmctld -D -c -f "$SLURM_CONF"
    wait_for slurmctld "scontrol ping 2>/dev/null | grep -q UP"
    spawn slurmd slurmd -D -f "$SLURM_CONF" -N "$(hostname -s)"
    wait_for "the node" "sinfo -h -N -o %T 2>/dev/null | grep -qx idle"

    log "cluster up in $DIR: partition $PARTITION; $(sinfo -h -N -o '%c CPUs, %m MB, %G')"
    printf 'export %s=%q\n' SLURM_CONF "$SLURM_CONF" PATH "$DIR/bin:$PATH" \
        LOCAL_SLURM_DIR "$DIR" LOCAL_SLURM_PARTITION "$PARTITION" LOCAL_SLURM_GPUS "$N_GPUS"
}

stop() {
    DIR=${1:-${LOCAL_SLURM_DIR:-}}
    [[ -n $DIR && -d $DIR/pid ]] || die "usage: $0 stop DIR (the DIR that start printed)"
    export SLURM_CONF=$DIR/slurm.conf
    if pid_alive "$(cat "$DIR/pid/slurmctld" 2>/dev/null || true)"; then
        scancel --partition="$PARTITION" >/dev/null 2>&1 || true
        # Give slurmd a moment to signal the jobs' processes before it goes away.
        for _ in $(seq 25); do
            squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null | grep -q . || break
            sleep 0.2
        done
    fi
    local name pid
    for name in slurmd slurmctld munged; do
        pid=$(cat "$DIR/pid/$name" 2>/dev/null || true)
        if pid_alive "$pid"; then
            kill -TERM "$pid"
            for _ in $(seq 50); do
                pid_alive "$pid" || break
                sleep 0.2
            done
            if pid_alive "$pid"; then
                log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$DIR/pid/$name"
    done
    log "cluster in $DIR stopped"
}

status() {
    DIR=${1:-${LOCAL_SLURM_DIR:-}}
    [[ -n $DIR && -f $DIR/slurm.conf ]] || die "usage: $0 status DIR"
    export SLURM_CONF=$DIR/slurm.conf
    sinfo -N -o "%N %T %C %m %G"
    squeue -t all -o "%i %j %T %b %m %l %k"
}

case "${1:-}" in
start) start "${2:-}" ;;
stop) stop "${2:-}" ;;
status) status "${2:-}" ;;
*)
    echo "usage: $0 start [DIR] | status DIR | stop DIR" >&2
    exit 2
    ;;
esac
