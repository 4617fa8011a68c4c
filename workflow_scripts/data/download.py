"""Fetch BBBC021 from the Broad Bioimage Benchmark Collection: tables and per-plate image zips.

    python -m workflow_scripts.data.download plate --base-url URL --plate Week1_22123 \\
        --image-root ROOT --marker ROOT/.download/Week1_22123.done
    python -m workflow_scripts.data.download tables --image-table-url URL --moa-table-url URL \\
        --image-table PATH --moa-table PATH [--plates Week1_22123 ...]

A plate comes as `{base_url}BBBC021_v1_images_{plate}.zip`, which unpacks to `{plate}/*.tif`; it
ends up in `ROOT/{week}/{plate}/`, the layout the official image table's Image_PathName describes.
Downloads resume: bytes arrive in `<file>.part` and an interrupted transfer (dropped connection,
timeout, rerun after a crash) continues with an HTTP Range request where it stopped. A file counts
as downloaded only when its size equals what the server announced. A zip is unpacked into a
temporary folder that is renamed into place, then the marker file is written, so a plate folder is
either complete or absent and a plate with a marker is skipped. Every request has a timeout and
every retry loop a bound. With `--plates`, the image table keeps the rows of those plates only, so
validation does not look for images that were not fetched.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import time
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path

import pandas as pd

from workflow_scripts.atomic import atomic_dir, atomic_path, write_text
from workflow_scripts.errors import InputError, cli

# The 55 plates of BBBC021 v1, one zip each.
BBBC021_PLATES = (
    "Week1_22123 Week1_22141 Week1_22161 Week1_22361 Week1_22381 Week1_22401 "
    "Week2_24121 Week2_24141 Week2_24161 Week2_24361 Week2_24381 Week2_24401 "
    "Week3_25421 Week3_25441 Week3_25461 Week3_25681 Week3_25701 Week3_25721 "
    "Week4_27481 Week4_27521 Week4_27542 Week4_27801 Week4_27821 Week4_27861 "
    "Week5_28901 Week5_28921 Week5_28961 Week5_29301 Week5_29321 Week5_29341 "
    "Week6_31641 Week6_31661 Week6_31681 Week6_32061 Week6_32121 Week6_32161 "
    "Week7_34341 Week7_34381 Week7_34641 Week7_34661 Week7_34681 "
    "Week8_38203 Week8_38221 Week8_38241 Week8_38341 Week8_38342 "
    "Week9_39206 Week9_39221 Week9_39222 Week9_39282 Week9_39283 Week9_39301 "
    "Week10_40111 Week10_40115 Week10_40119"
).split()
ZIP_NAME = "BBBC021_v1_images_{plate}.zip"
DOWNLOAD_DIR = ".download"  # under the image root: partial zips and completion markers
CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per request: connecting and each read
MAX_ATTEMPTS = 8  # per file; each attempt resumes where the previous one stopped
RETRY_WAIT_S = 5.0  # first pause between attempts, doubling up to MAX_WAIT_S
MAX_WAIT_S = 60.0
GZIP_MAGIC = b"\x1f\x8b"
PLATE_COLUMN = "Image_Metadata_Plate_DAPI"
CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+)")


class DownloadError(InputError):
    """A transfer that cannot be completed; the message names the URL."""


def plates_setting(plates: str | list[str]) -> list[str]:
    """Config `data.download.plates`: "all" or a list of BBBC021 plates (zip stems)."""
    if plates == "all":
        return list(BBBC021_PLATES)
    unknown = [p for p in plates if p not in BBBC021_PLATES]
    if unknown:
        raise InputError(
            f"config key 'data.download.plates': {unknown[0]!r} is not a BBBC021 plate "
            f"(BBBC021 plates look like {BBBC021_PLATES[0]} or {BBBC021_PLATES[-1]})"
        )
    return list(plates)


def week_of(plate: str) -> str:
    return plate.split("_")[0]


def marker_path(image_root: str | os.PathLike, plate: str) -> Path:
    return Path(image_root) / DOWNLOAD_DIR / f"{plate}.done"


def _announced_size(response, url: str) -> tuple[int, int]:
    """(first byte the response carries, total file size) from its status and headers."""
    if response.status == 206:
        match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or match.group(1) is None:
            content_range = response.headers.get("Content-Range")
            raise DownloadError(f"{url}: unusable Content-Range {content_range!r}")
        return int(match.group(1)), int(match.group(2))
    length = response.headers.get("Content-Length")
    if length is None:
        raise DownloadError(
            f"{url}: the server sends no Content-Length, so completeness cannot be checked"
        )
    return 0, int(length)


def _transfer(url: str, part: Path, timeout: float) -> int | None:
    """One request appending to `part` from its current size; returns the file's total size as
    the server announced it (None when a stale `part` had to be discarded)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # nothing left after `offset`: complete already, or a stale part
            match = CONTENT_RANGE.fullmatch(err.headers.get("Content-Range", "").strip())
            if match and int(match.group(2)) == offset:
                return offset
            part.unlink()
            return None
        if err.code >= 500 or err.code == 429:
            raise  # the server's trouble: worth another attempt
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    with response:
        start, total = _announced_size(response, url)
        if start != offset:  # server ignored the Range header: start over
            part.unlink(missing_ok=True)
        with open(part, "ab") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
    return total


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    timeout: float = TIMEOUT_S,
    max_attempts: int = MAX_ATTEMPTS,
    retry_wait: float = RETRY_WAIT_S,
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming across attempts and runs. An
    existing `dest` is complete (it is renamed from `.part` only once the size matched).

    Raises DownloadError naming the URL when the server refuses, or when after `max_attempts`
    the received size still differs from the announced one.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    announced: int | None = None
    last_error = ""
    for attempt in range(max_attempts):
        if attempt:
            time.sleep(min(retry_wait * 2 ** (attempt - 1), MAX_WAIT_S))
        try:
            total = _transfer(url, part, timeout)
        except (HTTPException, OSError) as err:  # dropped connection, timeout, HTTP 5xx
            last_error = f"; last error: {type(err).__name__}: {getattr(err, 'reason', err)}"
            continue
        if total is None:
            continue
        announced = total
        received = part.stat().st_size if part.exists() else 0
        if received == total:
            os.replace(part, dest)
            return dest
        if received > total:  # not the file we were resuming: start over
            part.unlink()
    received = part.stat().st_size if part.exists() else 0
    raise DownloadError(
        f"{url}: download incomplete after {max_attempts} attempts: received {received} bytes, "
        f"the server announced {announced if announced is not None else 'no size'}{last_error}"
    )


def fetch_plate(
    base_url: str,
    plate: str,
    image_root: str | os.PathLike,
    marker: str | os.PathLike | None = None,
    **download_options,
) -> Path:
    """Download and unpack one plate into `image_root/{week}/{plate}/`; skipped when its
    marker exists. Returns the plate folder."""
    image_root = Path(image_root)
    marker = Path(marker) if marker else marker_path(image_root, plate)
    target = image_root / week_of(plate) / plate
    if marker.exists() and target.is_dir():
        return target
    url = base_url + ZIP_NAME.format(plate=plate)
    archive_path = image_root / DOWNLOAD_DIR / ZIP_NAME.format(plate=plate)
    archive = download_file(url, archive_path, **download_options)
    try:
        with atomic_dir(target) as tmp:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)  # CRC-checked while reading; names are sanitised by zipfile
            inner = Path(tmp) / plate
            if inner.is_dir():  # the zip holds `{plate}/...`: lift its content one level
                for item in inner.iterdir():
                    item.rename(Path(tmp) / item.name)
                inner.rmdir()
            if not any(Path(tmp).rglob("*.tif")):
                raise DownloadError(f"{url}: the zip holds no .tif image")
    except zipfile.BadZipFile as err:
        archive.unlink()  # corrupt: the next run downloads it again
        raise DownloadError(
            f"{url}: not a valid zip ({err}); deleted, run again to download it again"
        ) from err
    archive.unlink()
    write_text(marker, f"{url}\n")
    return target


def fetch_table(
    url: str, dest: str | os.PathLike, plates: list[str] | None = None, **download_options
) -> None:
    """Download a metadata table to `dest` (gzip-compressed if `dest` ends in .gz); with
    `plates`, keep only the image-table rows of those plates."""
    dest = Path(dest)
    raw = download_file(url, dest.with_name(f".{dest.name}.download"), **download_options)
    try:
        data = raw.read_bytes()
    finally:
        raw.unlink()
    if data[:2] == GZIP_MAGIC:  # served compressed: store the table's text either way
        data = gzip.decompress(data)
    if plates is not None:
        table = pd.read_csv(io.BytesIO(data))
        if PLATE_COLUMN not in table.columns:
            raise DownloadError(f"{url}: no column {PLATE_COLUMN}, not a BBBC021 image table")
        data = table[table[PLATE_COLUMN].isin(plates)].to_csv(index=False).encode()
    with atomic_path(dest) as tmp:
        tmp.write_bytes(gzip.compress(data) if dest.suffix == ".gz" else data)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    plate = commands.add_parser("plate", help="download and unpack one plate zip")
    plate.add_argument("--base-url", required=True)
    plate.add_argument("--plate", required=True)
    plate.add_argument("--image-root", required=True)
    plate.add_argument(
        "--marker", help=f"completion marker (default: ROOT/{DOWNLOAD_DIR}/PLATE.done)"
    )
    tables = commands.add_parser("tables", help="download the image and MoA tables")
    tables.add_argument("--image-table-url", required=True)
    tables.add_argument("--moa-table-url", required=True)
    tables.add_argument("--image-table", required=True)
    tables.add_argument("--moa-table", required=True)
    tables.add_argument("--plates", nargs="+", help="keep only these plates' rows (default: all)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.command == "plate":
        plates_setting([args.plate])
        folder = fetch_plate(args.base_url, args.plate, args.image_root, args.marker)
        n_images = sum(1 for _ in folder.glob("*.tif"))
        print(f"{args.plate}: {n_images} images in {folder} ({time.perf_counter() - start:.0f} s)")
    else:
        plates = plates_setting(args.plates) if args.plates else None
        fetch_table(args.moa_table_url, args.moa_table)
        fetch_table(args.image_table_url, args.image_table, plates)
        print(f"tables: {args.image_table}, {args.moa_table} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
