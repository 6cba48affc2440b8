#!/usr/bin/env bash
# Stop the mini cluster that infra/local/start.sh started from MINI_STATE_DIR
# (default ./runs/mini-cluster): exactly the process groups whose PIDs it recorded,
# and only while they still are what it started. Other Ray clusters, MLflow servers
# and S3 stores on this machine are left alone (no `ray stop`, which ends every Ray
# process of the user). Data, logs and credentials stay in the state dir.
#
#   infra/local/stop.sh            # everything
#   infra/local/stop.sh mlflow     # only the named services (ray, mlflow, postgres, s3)
set -euo pipefail

log() { echo "[mini-cluster] $*" >&2; }

STATE_DIR="${MINI_STATE_DIR:-./runs/mini-cluster}"
PID_DIR="$STATE_DIR/pids"
if [[ ! -d "$PID_DIR" ]]; then
    log "nothing to stop: no $PID_DIR (started with another MINI_STATE_DIR?)"
    exit 0
fi

# Is $1 still the session leader start.sh launched, running the expected program ($2)?
ours() {
    local pid="$1" program="$2"
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$program"
}

group_alive() { pgrep -g "$1" >/dev/null 2>&1; }

wait_group() {  # pgid, seconds
    local deadline=$((SECONDS + $2))
    while group_alive "$1" && ((SECONDS < deadline)); do sleep 0.5; done
    ! group_alive "$1"
}

stop_one() {  # name, program in its command line, graceful: leader|group|leader-int
    local name="$1" program="$2" graceful="$3" file="$PID_DIR/$1.pid" pid
    [[ -f "$file" ]] || return 0
    pid="$(cat "$file")"
    if ! ours "$pid" "$program"; then
        if group_alive "$pid" && [[ "$(ps -o pgid= -p "$(pgrep -g "$pid" | head -n1)" | tr -d ' ')" == "$pid" ]]; then
            log "$name: leader $pid is gone; ending the rest of its process group"
            kill -KILL -- "-$pid" 2>/dev/null || true
        else
            log "$name: not running (pid $pid)"
        fi
        rm -f "$file"
        return 0
    fi
    log "stopping $name (process group $pid)"
    if [[ "$graceful" == leader ]]; then
        # `ray start --block` ends its raylet, GCS, dashboard and workers on SIGTERM.
        kill -TERM "$pid" 2>/dev/null || true
    elif [[ "$graceful" == leader-int ]]; then
        # PostgreSQL's postmaster: SIGINT is a fast shutdown (ends sessions, checkpoints, exits).
        kill -INT "$pid" 2>/dev/null || true
    else
        kill -TERM -- "-$pid" 2>/dev/null || true
    fi
    if ! wait_group "$pid" 30; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        if ! wait_group "$pid" 10; then
            log "$name did not stop on SIGTERM; sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || true
            wait_group "$pid" 10 || log "WARNING: process group $pid is still alive"
        fi
    fi
    rm -f "$file"
}

if (($#)); then SERVICES=("$@"); else SERVICES=(ray mlflow postgres s3); fi
for s in "${SERVICES[@]}"; do
    [[ "$s" =~ ^(ray|mlflow|postgres|s3)$ ]] || { log "unknown service '$s' (ray, mlflow, postgres, s3)"; exit 2; }
done
wanted() { [[ " ${SERVICES[*]} " == *" $1 "* ]]; }
# Ray first (its jobs talk to MLflow and S3), then MLflow (it writes to PostgreSQL and S3),
# then PostgreSQL, then S3.
if wanted ray; then stop_one ray "ray start" leader; fi
if wanted mlflow; then stop_one mlflow "mlflow server" group; fi
if wanted postgres; then stop_one postgres "postgres -D" leader-int; fi
if wanted s3; then stop_one s3 "weed mini" group; fi
log "stopped ${SERVICES[*]} (state kept in $STATE_DIR)"
