"""Loading the shipped model artifacts: every failure names the file it came from."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def named_load_errors(path: str | Path, kind: str) -> Iterator[None]:
    """Re-raise a load failure as one ValueError line naming `path` (a missing file stays
    FileNotFoundError): numpy's messages for a truncated or foreign file do not say which."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: not a {kind} artifact ({type(exc).__name__}: {str(exc)[:120]})") from None
