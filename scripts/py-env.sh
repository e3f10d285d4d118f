#!/usr/bin/env bash
# Create or update the Python virtual environment used by scripts/crosscheck.py
# and fixtures/generate.py:  <repo>/.venv  with fixtures/requirements.txt plus
# the pins below.
#
#   scripts/py-env.sh
#
# Idempotent. `.venv/.stamp` holds the sha256 of the requirements (file plus
# EXTRA); when it matches, nothing is installed. Otherwise pip installs only
# what is missing or at another version, and the stamp is rewritten.
# Needs python3 with the venv module, and PyPI. Set PYTHON to use another
# interpreter. Everything it says goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQS="$ROOT/fixtures/requirements.txt"
# Pins needed by crosscheck.py beyond what the fixtures need.
EXTRA=(jsonschema==4.26.0 gguf==0.19.0 bitsandbytes==0.50.2 accelerate==1.15.0 peft==0.21.2)

log() { echo "py-env: $*" >&2; }

want="$( { cat "$REQS"; printf '%s\n' "${EXTRA[@]}"; } | sha256sum | cut -d' ' -f1)"

if [[ -f "$VENV/.stamp" && "$(cat "$VENV/.stamp")" == "$want" && -x "$VENV/bin/python" ]]; then
    log "$VENV is up to date (stamp $want)"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with ${PYTHON:-python3} ($("${PYTHON:-python3}" --version 2>&1))"
    "${PYTHON:-python3}" -m venv "$VENV"
fi

log "installing $REQS and ${EXTRA[*]}"
rm -f "$VENV/.stamp"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --progress-bar off \
    -r "$REQS" "${EXTRA[@]}" >&2
echo "$want" >"$VENV/.stamp"
log "done; stamp $want"
