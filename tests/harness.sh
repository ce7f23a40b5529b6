# Shared by tests/c/run.sh, tests/packaging/run.sh and tests/dist/run.sh (sourced after WORK is
# set): cleanup of the sandboxes started and of WORK, pass/fail bookkeeping, step output, sandbox
# start-up and the closing summary ("N passed, M failed", non-zero status when anything failed).

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PASSED=0
FAILED=0
FAILED_NAMES=()
pass() { PASSED=$((PASSED + 1)); echo "ok   $1"; }
fail() { FAILED=$((FAILED + 1)); FAILED_NAMES+=("$1"); echo "FAIL $1"; }

# step NAME LOG RC: show a finished step's output indented and record it as passed or failed.
step() {
    sed 's/^/    /' "$2"
    if [ "$3" -eq 0 ]; then pass "$1"; else echo "    (exit status $3)"; fail "$1"; fi
}

# run NAME CMD...: run a step with its output in $WORK/step.log, show it indented, record it as
# passed or failed; returns the step's status. (A step that reads step.log afterwards copies it
# first: the next run overwrites it.)
run() {
    local name=$1 log=$WORK/step.log rc=0
    shift
    "$@" >"$log" 2>&1 || rc=$?
    step "$name" "$log" "$rc"
    return "$rc"
}

# start_sandbox BIN VAR ARGS...: start the sandbox BIN on an ephemeral port and set VAR to
# http://127.0.0.1:PORT, or https:// when ARGS has --tls-dir (its process is stopped on exit).
start_sandbox() {
    local bin=$1 var=$2
    shift 2
    local portfile="$WORK/$var.port" log="$WORK/$var.log" scheme=http
    case " $* " in *" --tls-dir "*) scheme=https ;; esac
    "$bin" --port 0 --port-file "$portfile" "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    local pid=$!
    for _ in $(seq 1 200); do
        if [ -s "$portfile" ]; then
            printf -v "$var" '%s://127.0.0.1:%s' "$scheme" "$(tr -d '[:space:]' <"$portfile")"
            echo "sandbox $var: ${!var} ($*)"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "sandbox $var did not start:" >&2
    cat "$log" >&2
    exit 1
}

summary() {
    echo
    if [ "$FAILED" -ne 0 ]; then
        echo "failed:"
        printf '  %s\n' "${FAILED_NAMES[@]}"
    fi
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}
