"""One error type for bad user input, and the CLI wrapper that turns it into one clear line."""

from __future__ import annotations

import errno
import functools
import json
import sys
from collections.abc import Callable


class InputError(Exception):
    """Bad input from the user: a message that names the file, row, column or key at fault."""


def cli(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI entry point: InputError -> 'error: <message>' on stderr and exit status 2;
    a full disk, however the library reports it, likewise (one line, status 2)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except Exception as err:  # safetensors, pyarrow and torch each wrap ENOSPC their way
            if not disk_full(err):
                raise
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            detail = " ".join(str(err).split())[:300]  # torch appends a C++ stack trace
            print(f"error: {where}no space left on device ({detail})", file=sys.stderr)
            return 2

    return wrapper


def disk_full(err: BaseException) -> bool:
    """A write failed for lack of space (or quota). pyarrow and torch.save do not always set
    errno: torch reports a short write as "unexpected pos"."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return (
        "No space left on device" in text
        or "Disk quota exceeded" in text
        or (isinstance(err, RuntimeError) and "unexpected pos" in text)
    )


def json_object_option(text: str, option: str) -> dict:
    """A CLI option holding a JSON object (settings handed over by the rules)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{option}: not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise InputError(f"{option}: expected a JSON object, got {text!r}")
    return value
