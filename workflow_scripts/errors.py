"""One error type for bad user input, and the CLI wrapper that turns it into one clear line."""

from __future__ import annotations

import functools
import json
import sys
from typing import Callable


class InputError(Exception):
    """Bad input from the user: a message that names the file, row, column or key at fault."""


def cli(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI entry point: InputError -> 'error: <message>' on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper


def json_object_option(text: str, option: str) -> dict:
    """A CLI option holding a JSON object (settings handed over by the rules)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{option}: not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise InputError(f"{option}: expected a JSON object, got {text!r}")
    return value
