# Shared by the recipes' run.sh scripts (sourced, not run): the `afterburner` binary, the
# dataset, and a reward server that is started here unless one already answers.
#
#   AFTERBURNER       the afterburner binary [target/release/afterburner of this checkout,
#                     else `afterburner` on PATH]
#   DATASET           FORMAT:PATH of the problems [coffe:<checkout>/../shared/data/coffe-code-contests]
#   AFTERBURNER_URLS  comma-separated servers to use [http://127.0.0.1:8080]; when the first
#                     does not answer /healthz, `afterburner serve` is started on it (it needs
#                     root: namespaces, cgroups) and stopped when the script exits.

RECIPES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$RECIPES_DIR/.." && pwd)
if [[ -z "${AFTERBURNER:-}" ]]; then
    if [[ -x "$REPO_DIR/target/release/afterburner" ]]; then
        AFTERBURNER="$REPO_DIR/target/release/afterburner"
    else
        AFTERBURNER=afterburner
    fi
fi
DATASET=${DATASET:-coffe:$REPO_DIR/../shared/data/coffe-code-contests}
AFTERBURNER_URLS=${AFTERBURNER_URLS:-http://127.0.0.1:8080}
export AFTERBURNER_URLS

# Writes `afterburner data KIND --format FORMAT` rows into DIR unless DIR/manifest.json exists.
make_data() {
    local kind=$1 format=$2 dir=$3
    shift 3
    if [[ -f "$dir/manifest.json" ]]; then
        echo "recipes: using the $kind data in $dir (delete it to rebuild)" >&2
        return
    fi
    "$AFTERBURNER" data "$kind" --dataset "$DATASET" --format "$format" --out "$dir" "$@"
}

# Starts `afterburner serve --dataset $DATASET` on the first URL unless a server answers there.
ensure_server() {
    local first=${AFTERBURNER_URLS%%,*}
    if curl -sf "$first/healthz" >/dev/null 2>&1; then
        echo "recipes: using the server at $first (it must have loaded $DATASET)" >&2
        return
    fi
    local addr=${first#http://}
    addr=${addr%%/*}
    echo "recipes: starting afterburner serve on $addr with $DATASET" >&2
    "$AFTERBURNER" serve --addr "$addr" --dataset "$DATASET" "$@" &
    SERVER_PID=$!
    trap 'kill -TERM "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null' EXIT
    for _ in $(seq 1 120); do
        if curl -sf "$first/healthz" >/dev/null 2>&1; then
            return
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "recipes: afterburner serve exited; see its messages above" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "recipes: afterburner serve did not answer $first/healthz within 60 s" >&2
    exit 1
}
