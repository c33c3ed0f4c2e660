#!/usr/bin/env bash
# slurm_local.sh — a one-machine SLURM cluster for trying nondet's cluster path locally.
#
# Usage (as root, on Debian/Ubuntu):
#     scripts/slurm_local.sh start     # install if missing, configure, start; waits until the node is idle
#     scripts/slurm_local.sh status    # sinfo + squeue; exit 0 when jobs can be submitted, 1 otherwise
#     scripts/slurm_local.sh stop      # scancel all jobs, stop slurmd, slurmctld and munged
#
# Then, for example:
#     python launch.py -m hydra/launcher=submitit_slurm source=init,shuffle
#     sbatch --wrap 'hostname'; squeue; sinfo
#
# What `start` sets up (it takes ~10 s on a fresh Debian machine, under 1 s when installed):
#   * packages, only when missing (apt-get, non-interactive, no recommends; `apt-get update` is run
#     only if the install fails): slurmctld slurmd slurm-client munge (Debian bookworm: Slurm 22.05).
#   * munge: /etc/munge/munge.key (created when absent, munge:munge 0400); munged runs as user munge.
#   * /etc/slurm/slurm.conf (where Debian's Slurm looks; overwritten only when this script wrote it,
#     or with NONDET_SLURM_FORCE=1, which keeps a .bak), plus cgroup.conf and gres.conf:
#       - one node, this host at 127.0.0.1, with all its CPUs (each a schedulable core) and its memory
#         minus a margin; memory is a consumable resource (DefMemPerCPU = memory / CPUs);
#       - partition `debug` (default, no time limit) and partition `urgent` (higher priority tier:
#         its jobs preempt `debug` jobs, which are requeued);
#       - daemons run as root; no cgroups (proctrack/linuxproc, task/none, and a cgroup.conf that
#         points the cgroup plugin slurmd 22.05 always loads at an empty directory);
#       - no accounting database: finished jobs are written to /var/log/slurm/jobcomp.log and stay in
#         `scontrol show job` for MinJobAge=300 s;
#       - checkpoint/requeue as on a cluster, but quick: JobRequeue=1, KillWait=5, OverTimeLimit=0,
#         a requeued job may restart after 10 s (AuthInfo=cred_expire; Slurm's default is 120 s)
#         and the scheduler looks at pending jobs every 2-5 s.
#     Slurm (22.05) checks time limits every 30 s (hard-coded): a job is killed 0-30 s after its
#     --time, and `--signal=SIG@N` arrives when at most N+30 s are left, i.e. up to 30 s early (with
#     --time=1 and N >= 30 that can be right at the start of the job).
#   * /usr/local/bin/sacct, a wrapper (only while slurm.conf has no accounting storage; otherwise it
#     runs the real sacct): answers `sacct -j ID -o FIELDS [-P]` from jobcomp.log and squeue, array
#     tasks included. submitit (and so Hydra's submitit launcher) polls job states that way; with the
#     real sacct every state is UNKNOWN, results still come back through their files, but a job or
#     array task killed before writing its result (scancel, preemption, a hard kill) is never seen as
#     done and the launcher waits forever. NONDET_SLURM_SACCT_SHIM=0 leaves it out.
#   * GPUs: the node gets Gres=gpu:N when /dev/nvidia0.. exist. NONDET_SLURM_GPUS=N sets N; beyond the
#     real devices the GPUs are fake (links to /dev/null in /var/spool/slurmd-fakegpu), so jobs that ask
#     for GPUs (gpus_per_node=1) are scheduled on a CPU-only machine and simply find no CUDA device.
#   * state in /var/spool/slurmctld and /var/spool/slurmd, logs in /var/log/slurm/{slurmctld,slurmd}.log
#     and /var/log/munge/munged.log, pid files in /run.
# `start` when everything is up only reports the status; when a setting below changed the generated
# configuration, it restarts slurmctld and slurmd with the new one.
#
# submitit on this cluster: `timeout_min` must leave room for `signal_delay_s` (Hydra's launcher
# defaults to 120 s, submitit to 90 s: with a limit of 1-2 minutes the warning comes at once), and
# Hydra's launcher requeues timed-out jobs only with `max_num_timeout` > 0 (its default is 0).
#
# Settings (environment variables):
#   NONDET_SLURM_CPUS        CPUs of the node                       (default: nproc)
#   NONDET_SLURM_MEMORY_MB   RealMemory in MiB                      (default: MemTotal minus 1 GiB, at most 10%)
#   NONDET_SLURM_GPUS        GPUs of the node (gres gpu)            (default: number of /dev/nvidia[0-9]*)
#   NONDET_SLURM_NODENAME    node name                              (default: hostname -s)
#   NONDET_SLURM_PARTITION   name of the default partition          (default: debug)
#   NONDET_SLURM_TIMEOUT     seconds to wait for the node to be idle (default: 60)
#   NONDET_SLURM_NO_INSTALL  1: never run apt-get; fail when Slurm or munge is missing
#   NONDET_SLURM_REQUEUE_DELAY  seconds before a requeued job may start again (AuthInfo=cred_expire;
#                            default 10, Slurm's own default is 120)
#   NONDET_SLURM_SACCT_SHIM  0: do not install the /usr/local/bin/sacct wrapper (and remove ours)
#   NONDET_SLURM_FORCE       1: overwrite a /etc/slurm/slurm.conf this script did not write
set -euo pipefail

MARKER="# written by nondet scripts/slurm_local.sh"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
NO_CGROUP_DIR=/var/spool/slurmd-nocgroup
FAKE_GPU_DIR=/var/spool/slurmd-fakegpu
TIMEOUT="${NONDET_SLURM_TIMEOUT:-60}"
PARTITION="${NONDET_SLURM_PARTITION:-debug}"

say() { printf '[slurm_local] %s\n' "$*"; }
die() { printf '[slurm_local] ERROR: %s\n' "$*" >&2; exit 1; }

show_logs() {
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        if [[ -s "$f" ]]; then
            printf '\n----- tail %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2
        fi
    done
}

pid_alive() {  # pid_alive PIDFILE NAME -> 0 if the pid in PIDFILE is a running NAME
    local pid
    [[ -r "$1" ]] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

slurm_usable() {  # controller answers and the node accepts jobs
    command -v sinfo >/dev/null || return 1
    local states
    states="$(timeout 10 sinfo -h -N -o '%T' 2>/dev/null)" || return 1
    [[ -n "$states" ]] || return 1
    ! grep -qvE '^(idle|mixed|allocated|completing)$' <<<"$states"
}

# ------------------------------------------------------------------ install

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    ((${#missing[@]})) || return 0
    [[ "${NONDET_SLURM_NO_INSTALL:-0}" == 1 ]] && die "missing: ${missing[*]} (and NONDET_SLURM_NO_INSTALL=1)"
    command -v apt-get >/dev/null || die "missing: ${missing[*]}; install them (no apt-get here)"
    say "installing ${missing[*]} (apt-get)"
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting daemons with Debian's default configuration;
    # this script starts them itself. A policy-rc.d that is already there is left alone.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    local ok=0
    if apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/slurm_local_apt.log 2>&1; then
        ok=1
    else  # stale package lists: update once and retry
        say "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >>/tmp/slurm_local_apt.log 2>&1 || true
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/slurm_local_apt.log 2>&1 && ok=1
    fi
    ((made_policy)) && rm -f "$policy"
    if ((!ok)); then
        tail -n 20 /tmp/slurm_local_apt.log >&2
        die "could not install ${missing[*]} (log: /tmp/slurm_local_apt.log)"
    fi
    say "installed in $((SECONDS - t0)) s: $(dpkg-query -W -f '${Package} ${Version}\n' "${missing[@]}" | paste -sd, - | sed 's/,/, /g')"
}

# ------------------------------------------------------------------ munge

start_munge() {
    if munge_ok; then
        say "munged: running"
        return 0
    fi
    getent passwd munge >/dev/null || die "user munge does not exist (is the munge package installed?)"
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    if [[ ! -s "$MUNGE_KEY" ]]; then
        say "creating $MUNGE_KEY"
        if command -v mungekey >/dev/null; then
            mungekey --create --force --keyfile="$MUNGE_KEY" >/dev/null
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    # A stale socket or pid file from a killed munged makes the new one refuse to start.
    if ! pgrep -u munge -x munged >/dev/null; then
        rm -f "$MUNGE_RUN/munge.socket.2" "$MUNGE_RUN/munge.socket.2.lock" "$MUNGE_RUN/munged.pid"
    fi
    runuser -u munge -- /usr/sbin/munged || { show_logs; die "munged did not start"; }
    local i
    for i in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || { show_logs; die "munged started but munge -n | unmunge fails"; }
    say "munged: started"
}

# ------------------------------------------------------------------ configuration

node_name() { echo "${NONDET_SLURM_NODENAME:-$(hostname -s)}"; }

gpu_devices() { compgen -G '/dev/nvidia[0-9]*' | sort -V || true; }

write_conf() {  # write_conf FILE: generate slurm.conf (and gres.conf / cgroup.conf beside it)
    local out="$1" node cpus mem_total mem gpus
    node="$(node_name)"
    cpus="${NONDET_SLURM_CPUS:-$(nproc)}"
    mem_total=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    mem=$((mem_total - 1024))
    ((mem < mem_total * 9 / 10)) && mem=$((mem_total * 9 / 10))
    mem="${NONDET_SLURM_MEMORY_MB:-$mem}"
    gpus="${NONDET_SLURM_GPUS:-$(gpu_devices | wc -l)}"
    local gres="" gres_types=""
    if ((gpus > 0)); then
        gres=" Gres=gpu:$gpus"
        gres_types="GresTypes=gpu"
    fi
    cat >"$out" <<EOF
$MARKER - rerun it rather than editing this file.
# One node (this host) that is controller and compute node; no accounting database; no cgroups.
ClusterName=nondet
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
# cred_expire also delays the restart of a requeued job (default 120 s)
AuthInfo=cred_expire=${NONDET_SLURM_REQUEUE_DELAY:-10}
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
# Trust slurm.conf over what slurmd detects (NONDET_SLURM_CPUS / _MEMORY_MB may exceed the hardware).
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
# Look at pending jobs often (defaults: 30 s / 60 s), so a requeued job restarts soon after it may.
SchedulerParameters=bf_interval=2,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
$gres_types
# No accounting: sacct reports "accounting storage is disabled"; finished jobs go to a text log.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
# Time limits, signals and requeue behave as on a cluster, but quickly.
JobRequeue=1
KillWait=5
OverTimeLimit=0
MinJobAge=300
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
ReturnToService=2
# A job in partition urgent preempts (requeues) jobs in partition $PARTITION.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem$gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP PriorityTier=1 OverSubscribe=NO
PartitionName=urgent Nodes=$node Default=NO MaxTime=INFINITE State=UP PriorityTier=2 OverSubscribe=NO
EOF
}

write_gres_conf() {  # write_gres_conf FILE
    local out="$1" gpus real files i
    gpus="${NONDET_SLURM_GPUS:-$(gpu_devices | wc -l)}"
    real="$(gpu_devices | wc -l)"
    {
        echo "$MARKER"
        if ((gpus > 0 && real >= gpus)); then
            files="$(gpu_devices | head -n "$gpus" | paste -sd, -)"
            echo "NodeName=$(node_name) Name=gpu File=$files"
        elif ((gpus > 0)); then
            # Not enough GPUs: Slurm 22.05 drops a GPU without a device file, so count fake ones,
            # links to /dev/null (jobs get CUDA_VISIBLE_DEVICES but no GPU).
            mkdir -p "$FAKE_GPU_DIR"
            for ((i = 0; i < gpus; i++)); do ln -sfn /dev/null "$FAKE_GPU_DIR/gpu$i"; done
            echo "NodeName=$(node_name) Name=gpu File=$FAKE_GPU_DIR/gpu[0-$((gpus - 1))]"
        fi
    } >"$out"
}

install_conf() {  # sets CONF_CHANGED=1 when the configuration changed
    mkdir -p "$CONF_DIR"
    if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        if [[ "${NONDET_SLURM_FORCE:-0}" == 1 ]]; then
            cp -a "$CONF" "$CONF.bak"
            say "kept the existing $CONF as $CONF.bak"
        else
            die "$CONF exists and was not written by this script; set NONDET_SLURM_FORCE=1 to replace it"
        fi
    fi
    local tmp
    CONF_CHANGED=1
    tmp="$(mktemp)"
    write_conf "$tmp"
    write_gres_conf "$tmp.gres"
    # slurmd 22.05 loads a cgroup plugin even with proctrack/linuxproc and task/none, and fails to
    # start when it cannot (cgroup v2 without systemd/dbus, read-only /sys/fs/cgroup in containers).
    # Pointing the v1 plugin at an empty directory makes it load and then never touch a cgroup.
    {
        echo "$MARKER"
        echo "CgroupPlugin=cgroup/v1"
        echo "CgroupMountpoint=$NO_CGROUP_DIR"
    } >"$tmp.cgroup"
    mkdir -p "$NO_CGROUP_DIR"
    if cmp -s "$tmp" "$CONF" && cmp -s "$tmp.gres" "$CONF_DIR/gres.conf" && cmp -s "$tmp.cgroup" "$CONF_DIR/cgroup.conf"; then
        CONF_CHANGED=0
    fi
    install -m 0644 "$tmp" "$CONF"
    install -m 0644 "$tmp.gres" "$CONF_DIR/gres.conf"
    install -m 0644 "$tmp.cgroup" "$CONF_DIR/cgroup.conf"
    rm -f "$tmp" "$tmp.gres" "$tmp.cgroup"
    if ((CONF_CHANGED)); then
        say "wrote $CONF ($(grep -oE '(CPUs|RealMemory|Gres)=[^ ]+' "$CONF" | paste -sd' ' -))"
    fi
}

# ------------------------------------------------------------------ sacct without a database

install_sacct_shim() {
    # submitit polls job states with `sacct -o JobID,State,NodeList --parsable2 -j ID`. Without an
    # accounting database sacct fails ("Slurm accounting storage is disabled"); submitit then logs
    # "Bypassing sacct error", every state stays UNKNOWN, and although finished jobs are still found
    # through their result files, a job (or array task) killed before writing one is never seen as
    # done: job.result() and Hydra's submitit launcher wait forever. `sacct --completion` is no
    # substitute: it cannot read array tasks. So this wrapper, earlier on PATH than the real sacct,
    # answers such queries itself from the job completion log (finished jobs) and squeue (live
    # ones), whenever slurm.conf has no accounting storage; otherwise it is the real sacct.
    local shim=/usr/local/bin/sacct real tmp
    if [[ "${NONDET_SLURM_SACCT_SHIM:-1}" != 1 ]]; then
        if [[ -e "$shim" ]] && grep -qF "$MARKER" "$shim"; then
            rm -f "$shim"
            say "removed the sacct wrapper $shim"
        fi
        return 0
    fi
    real="$(PATH=/usr/bin:/bin command -v sacct || true)"
    [[ -n "$real" ]] || return 0
    if [[ -e "$shim" ]] && ! grep -qF "$MARKER" "$shim"; then
        say "not installing the sacct wrapper: $shim exists"
        return 0
    fi
    tmp="$(mktemp)"
    cat >"$tmp" <<'SHIM'
#!/bin/bash
# @MARKER@
# sacct for a Slurm without accounting database: answers `sacct [-P|-p] [-n] [-X] [-o FIELDS] [-j IDS]`
# from the job completion log (JobCompType=jobcomp/filetxt) and squeue, array tasks included;
# anything else goes to `sacct --completion`. With accounting storage configured: the real sacct.
real=@REAL@
conf="${SLURM_CONF:-@CONF@}"
if ! grep -qiE '^[[:space:]]*AccountingStorageType[[:space:]]*=[[:space:]]*accounting_storage/none' "$conf" 2>/dev/null; then
    exec "$real" "$@"
fi
log="$(sed -n 's/^[[:space:]]*JobCompLoc[[:space:]]*=[[:space:]]*//Ip' "$conf" | tail -n1)"
fields="JobID,JobName,Partition,State,ExitCode" jobs="" sep="" header=1
while (($#)); do
    case "$1" in
        -j | --jobs) jobs="$jobs,$2"; shift ;;
        -j*) jobs="$jobs,${1#-j}" ;;
        --jobs=*) jobs="$jobs,${1#--jobs=}" ;;
        -o | --format) fields="$2"; shift ;;
        --format=*) fields="${1#--format=}" ;;
        -P | --parsable2) sep="2" ;;
        -p | --parsable) sep="1" ;;
        -n | --noheader) header=0 ;;
        -X | --allocations | -a | --allusers) ;;
        *) exec "$real" --completion "${@}" ;;
    esac
    shift
done
{
    [[ -r "$log" ]] && sed 's/^/L /' "$log"
    squeue -h -r -o 'Q %i|%A|%j|%P|%T|%N|%S|%e|%V' 2>/dev/null
} | awk -v fields="$fields" -v jobs="$jobs" -v sep="$sep" -v header="$header" '
function keep(id, raw, array_id,   k) {
    if (!njobs) return 1
    for (k = 1; k <= njobs; k++)
        if (want[k] == id || want[k] == raw || want[k] == array_id) return 1
    return 0
}
function put(id, key, value) { data[id, key] = value }
BEGIN {
    njobs = split(jobs, tmp, ","); n = 0
    for (k = 1; k <= njobs; k++) if (tmp[k] != "") want[++n] = tmp[k]
    njobs = n
    nf = split(fields, f, ",")
    for (k = 1; k <= nf; k++) { sub(/%.*/, "", f[k]); lf[k] = tolower(f[k]) }
}
$1 == "L" {  # JobId=7 ... Name=a b ... JobState=COMPLETED ... ArrayJobId=6 ArrayTaskId=0 ...
    delete kv; key = ""
    for (k = 2; k <= NF; k++) {
        if (match($k, /^[A-Za-z]+=/)) { key = substr($k, 1, RLENGTH - 1); kv[key] = substr($k, RLENGTH + 1) }
        else if (key != "") kv[key] = kv[key] " " $k
    }
    raw = kv["JobId"]; id = raw; array_id = ""
    if (("ArrayJobId" in kv) && kv["ArrayJobId"] != "" && kv["ArrayJobId"] != "0") {
        array_id = kv["ArrayJobId"]; id = array_id "_" kv["ArrayTaskId"]
    }
    if (!keep(id, raw, array_id)) next
    if (!(id in seen)) { seen[id] = 1; order[++count] = id }
    put(id, "jobid", id); put(id, "jobidraw", raw); put(id, "jobname", kv["Name"])
    put(id, "partition", kv["Partition"]); put(id, "state", kv["JobState"])
    put(id, "exitcode", kv["ExitCode"]); put(id, "nodelist", kv["NodeList"])
    put(id, "start", kv["StartTime"]); put(id, "end", kv["EndTime"]); put(id, "submit", kv["SubmitTime"])
    put(id, "user", kv["UserId"]); sub(/\(.*/, "", data[id, "user"])
    next
}
$1 == "Q" {  # live jobs: they override what the log says (a requeued job runs again)
    line = substr($0, 3); split(line, q, "|")
    id = q[1]; raw = q[2]; array_id = (id ~ /_/) ? substr(id, 1, index(id, "_") - 1) : ""
    if (!keep(id, raw, array_id)) next
    if (!(id in seen)) { seen[id] = 1; order[++count] = id }
    put(id, "jobid", id); put(id, "jobidraw", raw); put(id, "jobname", q[3]); put(id, "partition", q[4])
    put(id, "state", q[5]); put(id, "nodelist", (q[6] == "" ? "None assigned" : q[6]))
    put(id, "start", q[7]); put(id, "end", q[8]); put(id, "submit", q[9]); put(id, "exitcode", "0:0")
}
function out(values,   k, s) {
    s = ""
    for (k = 1; k <= nf; k++) {
        if (sep == "") s = s sprintf("%-14s ", substr(values[k], 1, 14))
        else s = s (k > 1 ? "|" : "") values[k]
    }
    if (sep == "1") s = s "|"
    print s
}
END {
    if (header) {
        for (k = 1; k <= nf; k++) h[k] = f[k]
        out(h)
        if (sep == "") { for (k = 1; k <= nf; k++) h[k] = "--------------"; out(h) }
    }
    for (i = 1; i <= count; i++) {
        for (k = 1; k <= nf; k++) v[k] = data[order[i], lf[k]]
        out(v)
    }
}'
SHIM
    sed -i "s|@MARKER@|${MARKER#\# }|; s|@REAL@|$real|; s|@CONF@|$CONF|" "$tmp"
    if ! cmp -s "$tmp" "$shim"; then
        install -m 0755 "$tmp" "$shim"
        say "installed $shim (sacct answers from the job completion log and squeue)"
    fi
    rm -f "$tmp"
}

# ------------------------------------------------------------------ daemons

stop_daemon() {  # stop_daemon PIDFILE NAME
    local pid i
    pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid="$(cat "$1")"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        [[ -d "/proc/$pid" ]] || break
        sleep 0.1
    done
    if [[ -d "/proc/$pid" ]]; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
    say "$2: stopped (pid $pid)"
}

start_daemons() {
    mkdir -p "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
    if ! pid_alive "$CTLD_PID" slurmctld; then
        # -i: ignore state files a different configuration left behind instead of refusing to start
        slurmctld -i || { show_logs; die "slurmctld did not start"; }
        say "slurmctld: started"
    else
        say "slurmctld: running"
    fi
    local i
    for i in $(seq $((TIMEOUT * 5))); do
        timeout 5 scontrol ping 2>/dev/null | grep -q UP && break
        sleep 0.2
    done
    timeout 5 scontrol ping 2>/dev/null | grep -q UP || { show_logs; die "slurmctld does not answer"; }
    if ! pid_alive "$SLURMD_PID" slurmd; then
        slurmd -N "$(node_name)" || { show_logs; die "slurmd did not start"; }
        say "slurmd: started"
    else
        say "slurmd: running"
    fi
}

wait_idle() {
    local node state t0=$SECONDS resumed=0
    node="$(node_name)"
    while ((SECONDS - t0 < TIMEOUT)); do
        state="$(timeout 5 sinfo -h -n "$node" -o '%T' 2>/dev/null | head -n1 || true)"
        case "$state" in
            idle | mixed | allocated | completing)
                say "node $node: $state (after $((SECONDS - t0)) s)"
                return 0
                ;;
            inval*)  # slurmd reported less than slurm.conf declares (e.g. GPUs): resuming won't help
                show_logs
                timeout 5 sinfo -R >&2 || true
                die "node $node is INVALID: slurmd reports fewer resources than $CONF declares"
                ;;
            *drain* | down* | fail*)
                if ((!resumed)); then
                    say "node $node: $state; resuming it"
                    scontrol update nodename="$node" state=resume 2>/dev/null || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.5
    done
    show_logs
    timeout 5 scontrol show node "$node" >&2 || true
    die "node $node did not become idle within $TIMEOUT s (state: ${state:-none})"
}

# ------------------------------------------------------------------ commands

cmd_status() {
    local rc=0
    if ! command -v sinfo >/dev/null; then
        say "Slurm is not installed (run: $0 start)"
        return 1
    fi
    if munge_ok; then say "munged: running"; else say "munged: not running"; rc=1; fi
    local pidfile name
    for name in slurmctld slurmd; do
        pidfile="$CTLD_PID"
        [[ $name == slurmd ]] && pidfile="$SLURMD_PID"
        if pid_alive "$pidfile" "$name"; then
            say "$name: running (pid $(cat "$pidfile"))"
        else
            say "$name: not running (per $pidfile)"
        fi
    done
    if ((rc == 0)) && timeout 10 sinfo 2>/dev/null; then
        timeout 10 squeue 2>/dev/null || true
    else
        rc=1
    fi
    if ((rc == 0)) && slurm_usable; then
        say "usable: yes ($(sinfo --version))"
        return 0
    fi
    say "usable: no"
    return 1
}

cmd_start() {
    local t0=$SECONDS
    [[ $EUID -eq 0 ]] || die "start must run as root (it installs packages and starts daemons)"
    install_packages
    say "$(slurmctld -V)"
    start_munge
    install_conf
    if ((CONF_CHANGED)) && { pid_alive "$CTLD_PID" slurmctld || pid_alive "$SLURMD_PID" slurmd; }; then
        say "configuration changed: restarting slurmctld and slurmd"
        stop_daemon "$SLURMD_PID" slurmd
        stop_daemon "$CTLD_PID" slurmctld
    fi
    install_sacct_shim
    start_daemons
    wait_idle
    say "ready in $((SECONDS - t0)) s"
    cmd_status
}

cmd_stop() {
    if command -v scancel >/dev/null && pid_alive "$CTLD_PID" slurmctld; then
        local u i n
        for u in $(timeout 10 squeue -h -o '%u' 2>/dev/null | sort -u); do
            timeout 10 scancel --user="$u" >/dev/null 2>&1 || true
        done
        # Give the jobs KillWait (5 s) to end while slurmd can still kill them.
        for i in $(seq 30); do
            n="$(timeout 5 squeue -h -t running,completing 2>/dev/null | wc -l)"
            ((n == 0)) && break
            sleep 0.5
        done
    fi
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
    local pid
    pid="$(cat "$MUNGE_RUN/munged.pid" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == munged ]]; then
        stop_daemon "$MUNGE_RUN/munged.pid" munged
    fi
    say "stopped"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 2
        ;;
esac
