"""Where Snakemake's between-workflow cache lives ($SNAKEMAKE_OUTPUT_CACHE), checked at start.

With `--cache`, Snakemake 9.27 reads the folder from $SNAKEMAKE_OUTPUT_CACHE. Unset, it only
warns and then fails at the first cached job with "Cache backend unavailable"; a relative path
gives outputs that are dangling symlinks (each output becomes a link to the cache entry, written
as given). So the workflow checks the location when `--cache` is on and names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from workflow_scripts.errors import InputError

LOCATION_VARIABLE = "SNAKEMAKE_OUTPUT_CACHE"


def check_location(environ: Mapping[str, str]) -> str:
    """The cache folder from the environment: an absolute path to a writable folder."""
    location = environ.get(LOCATION_VARIABLE, "")
    hint = f"e.g. export {LOCATION_VARIABLE}=/shared/fs/snakemake-cache (README)"
    if not location:
        raise InputError(f"--cache is on but ${LOCATION_VARIABLE} is not set: {hint}")
    if not os.path.isabs(location):
        raise InputError(
            f"${LOCATION_VARIABLE}={location}: must be an absolute path (outputs become links "
            f"to it): {hint}"
        )
    if not os.path.isdir(location):
        raise InputError(f"${LOCATION_VARIABLE}={location}: no such folder (mkdir -p it first)")
    if not os.access(location, os.W_OK | os.X_OK):
        raise InputError(f"${LOCATION_VARIABLE}={location}: folder is not writable")
    return location
