#!/usr/bin/env bash
# Creates .venv with the project (editable) and its pinned test dependencies; skips the
# install when pyproject.toml has not changed since the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-12)
[[ -f "$stamp" ]] && { echo "venv up to date"; exit 0; }
[[ -x .venv/bin/python ]] || python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
opts=(--quiet --disable-pip-version-check)
[[ -d /opt/wheels ]] && opts+=(--find-links /opt/wheels)  # the machine's local CPU torch wheel
# (the machine's pip config names local index folders that do not exist: hide those warnings)
set +o pipefail
.venv/bin/pip install "${opts[@]}" -e '.[all,test]' 2>&1 | { grep -v "^WARNING: Location" || true; }
rc=${PIPESTATUS[0]}
set -o pipefail
[[ $rc -eq 0 ]] || { echo "pip install failed ($rc)"; exit "$rc"; }
rm -f .venv/.installed-* && touch "$stamp"
echo "venv ready"
