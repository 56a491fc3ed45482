#!/usr/bin/env bash
# Creates .venv with the project (editable, every extra) and its pinned test dependencies;
# skips the install when pyproject.toml has not changed since the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
PROGRESS_TAG=setup-venv; source scripts/lib/progress.sh
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-12)
[[ -f "$stamp" ]] && { echo "venv up to date"; exit 0; }
if [[ ! -x .venv/bin/python ]]; then
  step "creating .venv" 10
  with_heartbeat 10 "python -m venv" bash -c 'python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv' 
  step_done
fi
opts=(--disable-pip-version-check --progress-bar on)
[[ -d /opt/wheels ]] && opts+=(--find-links /opt/wheels)  # the machine's local CPU torch wheel
step "pip install -e '.[all,test]' into .venv (first time ~2 min, then ~20 s from pip's cache)" 120
# (the machine's pip config names local index folders that do not exist: hide those warnings)
set +o pipefail
with_heartbeat 120 "pip install" .venv/bin/pip install "${opts[@]}" -e '.[all,test]' 2>&1 \
  | { grep --line-buffered -v -e "^WARNING: Location" -e "^Requirement already satisfied" || true; }
rc=${PIPESTATUS[0]}
set -o pipefail
[[ $rc -eq 0 ]] || { log "pip install failed ($rc)"; exit "$rc"; }
step_done
rm -f .venv/.installed-* && touch "$stamp"
echo "venv ready in $(total_elapsed): $(.venv/bin/pip list --disable-pip-version-check 2>/dev/null | tail -n +3 | wc -l) packages in $PWD/.venv; run .venv/bin/thrifty up"
