#!/usr/bin/env bash
# Builds and installs the Python package the way a user would (pip install ./bindings/python,
# in a fresh virtualenv), builds the sandbox server, and runs the pytest suite against it.
#
# Environment:
#   FHIRBULK_SANDBOX_BIN   use this sandbox binary instead of building target/debug/fhirbulk-sandbox
#   FHIRBULK_PY_VENV       virtualenv directory to (re)create (default: a temporary directory)
#   FHIRBULK_PY_EXTRAS     1 (default): also try pandas, pyarrow and tqdm, then polars and duckdb,
#                          then mypy (the typed keyword arguments' check) (optional; skipped
#                          when they cannot be installed within FHIRBULK_PY_EXTRAS_TIMEOUT
#                          seconds in all, default 240); 0: skip them (their tests are then
#                          skipped)
#   PYTHON                 the interpreter to make the virtualenv from (default python3)
# Extra arguments go to pytest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
python="${PYTHON:-python3}"

step() { printf '\n== %s\n' "$*"; }

# 1. The sandbox server the tests talk to over HTTP.
if [[ -n "${FHIRBULK_SANDBOX_BIN:-}" ]]; then
    sandbox="$FHIRBULK_SANDBOX_BIN"
else
    target_dir="${CARGO_TARGET_DIR:-$repo/target}"
    sandbox="$target_dir/debug/fhirbulk-sandbox"
    step "cargo build --features sandbox --bin fhirbulk-sandbox"
    cargo build --features sandbox --bin fhirbulk-sandbox
fi
[[ -x "$sandbox" ]] || { echo "run-tests.sh: no sandbox binary at $sandbox" >&2; exit 1; }

# 2. A fresh virtualenv with the package installed from source, as a user would.
cleanup=""
if [[ -n "${FHIRBULK_PY_VENV:-}" ]]; then
    venv="$FHIRBULK_PY_VENV"
    rm -rf "$venv"
else
    venv="$(mktemp -d "${TMPDIR:-/tmp}/fhirbulk-py-venv.XXXXXX")"
    cleanup="$venv"
fi
trap '[[ -n "$cleanup" ]] && rm -rf "$cleanup"' EXIT
step "$python -m venv $venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

step "pip install ./bindings/python pytest"
"${pip[@]}" install ./bindings/python pytest

if [[ "${FHIRBULK_PY_EXTRAS:-1}" != 0 ]]; then
    # Groups, so that a table library that cannot be had here does not cost the others; all
    # share the one time budget.
    extras_deadline=$((SECONDS + ${FHIRBULK_PY_EXTRAS_TIMEOUT:-240}))
    for group in "pandas pyarrow tqdm" "polars duckdb" "mypy"; do
        left=$((extras_deadline - SECONDS))
        step "pip install $group (optional extras, ${left}s left)"
        # shellcheck disable=SC2086 # the group is a list of names
        if ((left <= 0)) || ! timeout "$left" "${pip[@]}" install --only-binary=:all: $group; then
            echo "run-tests.sh: optional extras ($group) not installed; their tests will be skipped"
        fi
    done
fi

# 3. The tests, from outside the source tree so that the installed package is the one tested.
step "pytest bindings/python/tests"
cd "$here/tests"
FHIRBULK_SANDBOX_BIN="$sandbox" "$venv/bin/python" -m pytest -p no:cacheprovider -ra "$@" .
