"""One error type for bad user input, and the CLI wrapper that turns it into one clear line."""

from __future__ import annotations

import functools
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
