"""BBBC021 download: plate zips and tables from a local HTTP server (127.0.0.1, no network)."""

from __future__ import annotations

import gzip
import io
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from workflow_copy import copy_repo, snakemake, write_overlay

from workflow_scripts.data import download
from workflow_scripts.errors import InputError

PLATE = "Week1_22123"
FAST = {"timeout": 5.0, "max_attempts": 3, "retry_wait": 0.0}


class Server(ThreadingHTTPServer):
    """Serves `files` with HTTP Range support; can cut a transfer or announce a wrong size."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()  # first response stops half way, connection closed
        self.oversized: set[str] = set()  # announces 100 bytes more than it has
        self.requests: list[tuple[str, str | None]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class RangeHandler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        size = len(data) + (100 if self.path in self.server.oversized else 0)
        start = 0
        if self.headers.get("Range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        body = data[start:]
        if self.path in self.server.cut_once:
            self.server.cut_once.discard(self.path)
            body = body[: len(body) // 2]
        self.wfile.write(body)  # HTTP/1.0: the connection closes after each response

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy in the environment must not intercept
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def plate_zip(plate: str, n_files: int = 3) -> bytes:
    """A plate zip as BBBC021 ships it: `{plate}/<well>_s<site>_w<n><UUID>.tif`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(n_files):
            zf.writestr(f"{plate}/B0{i + 2}_s1_w1{i:08d}.tif", bytes(range(256)) * 40 + bytes([i]))
    return buffer.getvalue()


def zip_path(plate: str) -> str:
    return "/" + download.ZIP_NAME.format(plate=plate)


def test_plate_is_unpacked_into_its_week_folder_then_skipped(server, tmp_path):
    archive = plate_zip(PLATE)
    server.files[zip_path(PLATE)] = archive
    folder = download.fetch_plate(server.base_url, PLATE, tmp_path, **FAST)
    assert folder == tmp_path / "Week1" / PLATE
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for name in zf.namelist():
            assert (tmp_path / "Week1" / name).read_bytes() == zf.read(name)
    assert download.marker_path(tmp_path, PLATE).is_file()
    assert not list((tmp_path / download.DOWNLOAD_DIR).glob("*.zip*"))  # archive removed
    n_requests = len(server.requests)
    download.fetch_plate(server.base_url, PLATE, tmp_path, **FAST)
    assert len(server.requests) == n_requests  # complete plate: no new request


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    archive = plate_zip(PLATE, n_files=6)
    server.files[zip_path(PLATE)] = archive
    server.cut_once.add(zip_path(PLATE))
    download.fetch_plate(server.base_url, PLATE, tmp_path, **FAST)
    ranges = [r for path, r in server.requests if path == zip_path(PLATE)]
    assert ranges == [None, f"bytes={len(archive) // 2}-"]
    assert len(list((tmp_path / "Week1" / PLATE).iterdir())) == 6


def test_partial_file_from_an_earlier_run_is_continued(server, tmp_path):
    data = bytes(range(256)) * 100
    server.files["/table.csv"] = data
    part = tmp_path / "table.csv.part"
    part.write_bytes(data[:1000])
    download.download_file(server.base_url + "table.csv", tmp_path / "table.csv", **FAST)
    assert (tmp_path / "table.csv").read_bytes() == data
    assert server.requests == [("/table.csv", "bytes=1000-")]
    assert not part.exists()


def test_size_mismatch_is_an_error_naming_the_url(server, tmp_path):
    server.files["/table.csv"] = b"x" * 5000
    server.oversized.add("/table.csv")
    url = server.base_url + "table.csv"
    expected = re.escape(url) + ".*received 5000 bytes.*announced 5100"
    with pytest.raises(download.DownloadError, match=expected):
        download.download_file(url, tmp_path / "table.csv", **FAST)
    assert not (tmp_path / "table.csv").exists()
    assert len(server.requests) == FAST["max_attempts"]  # bounded retries


def test_missing_file_fails_at_once_and_cli_exits_2(server, tmp_path, capsys):
    code = download.main(
        ["plate", "--base-url", server.base_url, "--plate", PLATE, "--image-root", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert server.base_url + download.ZIP_NAME.format(plate=PLATE) in err
    assert "404" in err
    assert len(server.requests) == 1  # a client error is not retried
    assert not (tmp_path / "Week1").exists()


def test_corrupt_zip_leaves_no_plate_folder(server, tmp_path):
    server.files[zip_path(PLATE)] = b"PK\x03\x04 not really a zip" * 10
    with pytest.raises(download.DownloadError, match="not a valid zip"):
        download.fetch_plate(server.base_url, PLATE, tmp_path, **FAST)
    assert not (tmp_path / "Week1" / PLATE).exists()
    assert not download.marker_path(tmp_path, PLATE).exists()
    assert not list((tmp_path / download.DOWNLOAD_DIR).glob("*.zip"))  # downloaded again next run


def test_tables_keep_the_selected_plates_and_follow_the_destination_suffix(server, tmp_path):
    image_table = pd.DataFrame(
        {
            "Image_Metadata_Plate_DAPI": ["Week1_22123", "Week1_22141", "Week10_40111"],
            "Image_Metadata_Compound": ["taxol", "DMSO", "DMSO"],
        }
    )
    moa_csv = b'"compound",concentration,"moa"\n"taxol",0.300000,"Microtubule stabilizers"\n'
    server.files["/image.csv"] = image_table.to_csv(index=False).encode()
    server.files["/moa.csv"] = gzip.compress(moa_csv)  # served compressed, stored as text
    out_image = tmp_path / "t" / "BBBC021_v1_image.csv.gz"
    out_moa = tmp_path / "t" / "BBBC021_v1_moa.csv"
    code = download.main(
        [
            "tables",
            "--image-table-url",
            server.base_url + "image.csv",
            "--moa-table-url",
            server.base_url + "moa.csv",
            "--image-table",
            str(out_image),
            "--moa-table",
            str(out_moa),
            "--plates",
            "Week1_22123",
            "Week10_40111",
        ]
    )
    assert code == 0
    kept = pd.read_csv(out_image)  # .gz: written compressed
    assert kept["Image_Metadata_Plate_DAPI"].tolist() == ["Week1_22123", "Week10_40111"]
    assert out_moa.read_bytes() == moa_csv
    assert {p.name for p in out_image.parent.iterdir()} == {out_image.name, out_moa.name}


def test_plates_setting_names_the_key():
    assert len(download.plates_setting("all")) == 55
    assert download.plates_setting(["Week10_40119"]) == ["Week10_40119"]
    with pytest.raises(InputError, match="data.download.plates.*Week11_1"):
        download.plates_setting(["Week1_22123", "Week11_1"])


def test_zip_completed_by_an_earlier_run_is_not_fetched_again(server, tmp_path):
    archive = tmp_path / download.DOWNLOAD_DIR / download.ZIP_NAME.format(plate=PLATE)
    archive.parent.mkdir()
    archive.write_bytes(plate_zip(PLATE))  # the run was killed while unpacking
    download.fetch_plate(server.base_url, PLATE, tmp_path, **FAST)
    assert server.requests == []
    assert len(list((tmp_path / "Week1" / PLATE).iterdir())) == 3


@pytest.mark.slow
def test_download_rules_fetch_plates_then_tables(server, tmp_path):
    plates = ["Week1_22123", "Week10_40111"]
    for plate in plates:
        server.files[zip_path(plate)] = plate_zip(plate)
    image_table = pd.DataFrame(
        {
            "Image_Metadata_Plate_DAPI": ["Week1_22123", "Week2_24121", "Week10_40111"],
            "Replicate": [1, 1, 1],
        }
    )
    server.files["/image.csv"] = image_table.to_csv(index=False).encode()
    server.files["/moa.csv"] = b'"compound",concentration,"moa"\n"DMSO",0.000000,"DMSO"\n'
    workdir = copy_repo(tmp_path / "workflow")
    data = tmp_path / "bbbc021"
    shared = tmp_path / "shared"  # a read-only shared copy of the tables: never written
    shared.mkdir()
    (shared / "BBBC021_v1_image.csv.gz").write_bytes(b"shared image table")
    (shared / "BBBC021_v1_moa.csv").write_bytes(b"shared moa table")
    shared.chmod(0o555)
    overlay = write_overlay(
        tmp_path / "download.yaml",
        {
            "output_dir": str(tmp_path / "results"),
            "data": {
                "source": "official",
                "official": {
                    "image_table": str(shared / "BBBC021_v1_image.csv.gz"),
                    "moa_table": str(shared / "BBBC021_v1_moa.csv"),
                    "image_root": str(data / "images"),
                },
                "download": {
                    "enabled": True,
                    "base_url": server.base_url,
                    "image_table_url": server.base_url + "image.csv",
                    "moa_table_url": server.base_url + "moa.csv",
                    "plates": plates,
                },
            },
        },
    )
    snakemake(workdir, "download_tables", "--cores", "1", "--configfile", str(overlay))
    for plate in plates:
        assert len(list((data / "images" / plate.split("_")[0] / plate).glob("*.tif"))) == 3
    tables = tmp_path / "results" / "download"
    kept = pd.read_csv(tables / "BBBC021_v1_image.csv.gz")["Image_Metadata_Plate_DAPI"]
    assert kept.tolist() == plates  # Week2_24121 was not downloaded
    assert (tables / "BBBC021_v1_moa.csv").read_bytes() == server.files["/moa.csv"]
    assert (shared / "BBBC021_v1_image.csv.gz").read_bytes() == b"shared image table"
    assert (shared / "BBBC021_v1_moa.csv").read_bytes() == b"shared moa table"
    # prepare_metadata reads the downloaded tables, not the configured ones
    dry_run = snakemake(
        workdir,
        "prepare_metadata",
        "--cores",
        "1",
        "--configfile",
        str(overlay),
        "-n",
        "--forceall",
        "--printshellcmds",
    )
    planned = dry_run.stdout + dry_run.stderr
    assert f"--image-table {tables / 'BBBC021_v1_image.csv.gz'}" in planned
    assert str(shared) not in planned
    # the tables come last: every plate was requested before them
    order = [path for path, _ in server.requests]
    assert max(order.index(zip_path(p)) for p in plates) < order.index("/image.csv")
