"""Turn a tier's engine settings into a `vllm serve` command line, checked by vLLM itself.

The arguments are validated with vLLM's own parser whenever some vLLM is importable —
the project's venv on a GPU host, or the CPU build's venv on this machine — so a GPU
config (quantization, speculative decoding, batching) is checked on a laptop too.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from thrifty.config import ConfigError, Tier

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup-vllm-cpu.sh"
CACHE_ROOT = Path(os.environ.get("THRIFTY_CACHE", Path.home() / ".cache" / "thrifty"))

# Runs inside whichever Python has vLLM; prints "ok" or the parser's one-line error.
_VALIDATE_SNIPPET = """
import sys
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
try:  # vLLM >= 0.30 moved the serve parser
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
def fail(message):
    print("error: " + str(message).splitlines()[0]); sys.exit(3)
parser.error = fail
args = parser.parse_args(sys.argv[1:])
try:
    validate_parsed_serve_args(args)
except Exception as exc:
    fail(exc)
print("ok")
"""


def speculative_config(tier: Tier) -> dict[str, object] | None:
    """vLLM's `--speculative-config` JSON for the tier, or None."""
    spec = tier.engine.speculative
    if spec is None:
        return None
    out: dict[str, object] = {"method": spec.method, "num_speculative_tokens": spec.num_speculative_tokens}
    if spec.model:
        out["model"] = spec.model
    if spec.prompt_lookup_max is not None:
        out["prompt_lookup_max"] = spec.prompt_lookup_max
    if spec.prompt_lookup_min is not None:
        out["prompt_lookup_min"] = spec.prompt_lookup_min
    return out


def runtime_dir() -> Path:
    """Where local engines' ipc sockets live: $THRIFTY_RUNTIME_DIR, else /tmp/thrifty-<uid>."""
    return Path(os.environ.get("THRIFTY_RUNTIME_DIR") or f"/tmp/thrifty-{os.getuid()}")


def kv_events_endpoints(tier_name: str, port: int) -> tuple[str, str]:
    """(events, replay) ipc endpoints of the local replica of `tier_name` on `port`; the engine binds them."""
    base = runtime_dir() / f"kv-{tier_name}-{port}"
    return f"ipc://{base}.sock", f"ipc://{base}-replay.sock"


def kv_events_config(endpoint: str, replay_endpoint: str | None = None) -> str:
    """vLLM's `--kv-events-config` JSON: ZeroMQ publisher, topic `kv`."""
    cfg: dict[str, object] = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint, "topic": "kv"}
    if replay_endpoint:
        cfg["replay_endpoint"] = replay_endpoint
    return json.dumps(cfg, separators=(",", ":"))


def vllm_args(tier: Tier, *, port: int, host: str = "127.0.0.1", model_path: str | None = None,
              kv_events: tuple[str, str] | None = None) -> list[str]:
    """The `vllm serve` arguments (without the program) for one replica of `tier`.

    `kv_events` = (endpoint, replay endpoint): publish KV-cache events there (precise prefix routing).
    """
    eng = tier.engine
    args = ["--model", model_path or tier.model, "--served-model-name", *tier.served_names]
    args += ["--host", host, "--port", str(port), "--dtype", eng.dtype]
    args += ["--max-num-seqs", str(eng.max_num_seqs)]
    if eng.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(eng.max_num_batched_tokens)]
    if eng.quantization:
        args += ["--quantization", eng.quantization]
    spec = speculative_config(tier)
    if spec:
        args += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    args.append("--enable-prefix-caching" if eng.enable_prefix_caching else "--no-enable-prefix-caching")
    if eng.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", eng.kv_cache_dtype]
    if eng.max_model_len is not None:
        args += ["--max-model-len", str(eng.max_model_len)]
    if eng.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(eng.gpu_memory_utilization)]
    if eng.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(eng.tensor_parallel_size)]
    if eng.enforce_eager:
        args.append("--enforce-eager")
    if kv_events is not None:
        args += ["--kv-events-config", kv_events_config(*kv_events)]
    if eng.tool_call_parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", eng.tool_call_parser]
    return args + list(eng.extra_args)


def cpu_engine_venv() -> Path | None:
    """The ready venv made by scripts/setup-vllm-cpu.sh, if any (newest first)."""
    ready = sorted(glob.glob(str(CACHE_ROOT / "vllm-cpu-*" / ".ready")), key=os.path.getmtime, reverse=True)
    return Path(ready[0]).parent if ready else None


def ensure_cpu_engine() -> Path:
    """Install (or find, by content hash) the CPU vLLM venv; returns its path."""
    if not SETUP_SCRIPT.exists():
        raise ConfigError(f"engine: {SETUP_SCRIPT} is missing; set THRIFTY_VLLM_PYTHON to a Python with vLLM")
    result = subprocess.run(["bash", str(SETUP_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"engine: {SETUP_SCRIPT.name} failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


def vllm_python(install: bool = False) -> str | None:
    """A Python that can import vLLM: $THRIFTY_VLLM_PYTHON, this one, or the CPU venv."""
    if env := os.environ.get("THRIFTY_VLLM_PYTHON"):
        return env
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = cpu_engine_venv() or (ensure_cpu_engine() if install else None)
    return str(venv / "bin" / "python") if venv else None


def local_model_path(tier: Tier) -> str | None:
    """For the CPU demo: the converted model folder named like the tier's model, if present."""
    if Path(tier.model).is_dir():
        return tier.model
    venv = cpu_engine_venv()
    candidate = venv / "models" / tier.model if venv else None
    return str(candidate) if candidate and candidate.is_dir() else None


@dataclass(frozen=True, slots=True)
class Validation:
    checked: bool  # False when no vLLM was importable
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def validate_vllm_args(args: list[str], python: str | None = None, timeout_s: float = 120) -> Validation:
    """Parse `args` with vLLM's own `vllm serve` parser (in a subprocess: vLLM may live in another venv)."""
    python = python or vllm_python()
    if python is None:
        return Validation(checked=False, error=None)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "ERROR"}
    proc = subprocess.run(
        [python, "-c", _VALIDATE_SNIPPET, *args], capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("ok", "error:"))]
    if proc.returncode == 0 and lines and lines[-1] == "ok":
        return Validation(checked=True, error=None)
    if lines and lines[-1].startswith("error:"):
        return Validation(checked=True, error=lines[-1].removeprefix("error: "))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return Validation(checked=True, error=f"vLLM's parser could not run: {tail}")


def engine_env(tier: Tier) -> dict[str, str]:
    """Environment for a vLLM process: offline always; CPU knobs for the CPU build."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    if tier.engine.device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    return env
