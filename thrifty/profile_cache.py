"""Performance profiles measured on this machine, kept in the user cache.

A CPU engine's speed depends on the machine (cores, AVX2 vs AVX-512, memory): a profile
measured elsewhere was 30-40x off on another 2-core machine. `thrifty engine setup-cpu`
measures the real engine once and stores the fitted profile here; `get_profile` prefers it.

Where: $THRIFTY_PROFILES_DIR, else $THRIFTY_CACHE/profiles, else ~/.cache/thrifty/profiles;
one JSON file per profile name: {"profile": {GpuProfile fields}, "measurement": {...}}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path

from thrifty.profiles import GpuProfile

log = logging.getLogger("thrifty.profiles")
_FIELDS = {f.name for f in dataclasses.fields(GpuProfile)}
_loaded: dict[tuple[str, float], GpuProfile] = {}
_said: set[str] = set()


def profiles_dir() -> Path:
    if env := os.environ.get("THRIFTY_PROFILES_DIR"):
        return Path(env)
    return Path(os.environ.get("THRIFTY_CACHE", Path.home() / ".cache" / "thrifty")) / "profiles"


def profile_path(name: str) -> Path:
    return profiles_dir() / f"{name}.json"


def save_profile(profile: GpuProfile, measurement: dict[str, object], path: Path | None = None) -> Path:
    """Write the profile (atomically: a reader never sees half a file); returns its path."""
    path = path or profile_path(profile.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"profile": dataclasses.asdict(profile), "measurement": measurement}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        json.dump(body, f, indent=1)
    os.replace(f.name, path)
    return path


def load_profile(path: Path) -> GpuProfile:
    """The profile stored at `path`; ValueError with one line naming the file when it is bad."""
    try:
        with open(path) as f:
            body = json.load(f)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    fields = body.get("profile") if isinstance(body, dict) else None
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: no 'profile' object")
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ValueError(f"{path}: profile: unknown field {unknown[0]!r}")
    try:
        return GpuProfile(**fields)
    except TypeError as exc:  # a missing required field
        raise ValueError(f"{path}: profile: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def local_profile(shipped: GpuProfile) -> GpuProfile:
    """This machine's measured profile for `shipped.name` when one is stored, else `shipped` (said once)."""
    path = profile_path(shipped.name)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        _say(str(path), f"{shipped.name}: no profile measured on this machine ({path}); using the shipped one, "
                        "measured elsewhere (run `thrifty engine setup-cpu` to measure this machine)")
        return shipped
    key = (str(path), mtime)
    if key not in _loaded:
        try:
            profile = load_profile(path)
            if profile.name != shipped.name:
                raise ValueError(f"{path}: profile: name {profile.name!r} is not {shipped.name!r}")
        except ValueError as exc:
            _say(str(key), f"{exc}; using the shipped {shipped.name} profile")
            return shipped
        _loaded[key] = profile
    return _loaded[key]


def _say(key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        log.warning(message)
