"""The download path, against a real HTTP server on the loopback interface."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from helpers import write_corpus
from lm.data import CorpusDataModule
from lm.download import download
from lm.errors import DataError

NAMES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")


class _Truncating(http.server.SimpleHTTPRequestHandler):
    """Promises more bytes than it sends, then hangs up: an interrupted download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"partial content\n")
        self.wfile.flush()
        self.connection.close()

    def log_message(self, *args):
        pass


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(folder: Path, handler=_Quiet):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/files"


@pytest.fixture
def served(tmp_path):
    source = write_corpus(tmp_path / "www" / "files", prefix="ptb.")
    sums = {n: hashlib.sha256((source / n).read_bytes()).hexdigest() for n in NAMES}
    server, url = _serve(tmp_path / "www")
    yield source, url, sums
    server.shutdown()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_absent_files_are_downloaded_and_checked(tmp_path, served):
    source, url, sums = served
    dest = tmp_path / "data"
    dm = CorpusDataModule(str(dest), download=True, url=url, sha256=sums, batch_size=2)
    dm.prepare_data()
    assert _leftovers(dest) == sorted(NAMES)
    for n in NAMES:
        assert (dest / n).read_bytes() == (source / n).read_bytes()
    dm.setup()
    assert dm.vocab_size > 10


def test_checksum_mismatch_is_a_clear_error_and_leaves_no_file(tmp_path, served):
    _, url, sums = served
    dest = tmp_path / "data"
    bad = {**sums, "ptb.valid.txt": "0" * 64}
    dm = CorpusDataModule(str(dest), download=True, url=url, sha256=bad)
    with pytest.raises(DataError) as exc:
        dm.prepare_data()
    msg = str(exc.value)
    assert "checksum mismatch" in msg and "ptb.valid.txt" in msg and "data.data_dir" in msg
    assert "ptb.valid.txt" not in _leftovers(dest)
    assert not [n for n in _leftovers(dest) if n.endswith(".part")]


def test_missing_remote_file_names_where_to_put_the_files(tmp_path, served):
    source, url, sums = served
    (source / "ptb.test.txt").unlink()
    dest = tmp_path / "data"
    with pytest.raises(DataError) as exc:
        CorpusDataModule(str(dest), download=True, url=url, sha256=sums).prepare_data()
    assert "404" in str(exc.value) and "PTB_DIR" in str(exc.value)
    assert not [n for n in _leftovers(dest) if n.endswith(".part") or n == "ptb.test.txt"]


def test_interrupted_download_leaves_nothing_and_keeps_existing_file(tmp_path):
    server, url = _serve(tmp_path, _Truncating)
    try:
        dest = tmp_path / "data" / "ptb.train.txt"
        dest.parent.mkdir()
        dest.write_text("earlier content\n")
        with pytest.raises(DataError, match="could not download"):
            download(url + "/ptb.train.txt", dest, sha256=None)
        assert dest.read_text() == "earlier content\n"
        assert _leftovers(dest.parent) == ["ptb.train.txt"]
    finally:
        server.shutdown()


def test_corrupt_local_file_is_reported_with_the_fix(tmp_path, served):
    source, url, sums = served
    dest = write_corpus(tmp_path / "data", prefix="ptb.")
    (dest / "ptb.train.txt").write_text("tampered\n")
    with pytest.raises(DataError, match="Delete it to download it again"):
        CorpusDataModule(str(dest), download=True, url=url, sha256=sums).prepare_data()
    assert (dest / "ptb.train.txt").read_text() == "tampered\n"  # reported, not overwritten


def test_no_download_when_disabled(tmp_path, served):
    _, url, sums = served
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="missing split"):
        CorpusDataModule(str(dest), download=False, url=url, sha256=sums).prepare_data()
    assert _leftovers(dest) == []


WT2 = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}


def _zip_corpus(tmp_path):
    """A WikiText-2 shaped archive: wikitext-2/wiki.<split>.tokens inside wikitext-2-v1.zip."""
    import zipfile

    source = write_corpus(tmp_path / "src")
    www = tmp_path / "www" / "files"
    www.mkdir(parents=True)
    archive = www / "wikitext-2-v1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split, name in WT2.items():
            zf.write(source / f"{split}.txt", f"wikitext-2/{name}")
    return source, archive, {archive.name: hashlib.sha256(archive.read_bytes()).hexdigest()}


def test_archive_is_downloaded_from_the_first_mirror_that_serves_it_and_extracted(tmp_path):
    source, archive, sums = _zip_corpus(tmp_path)
    server, url = _serve(tmp_path / "www")
    try:
        dest = tmp_path / "wt2"
        dead = url.replace("/files", "/gone")  # 404: the first mirror no longer serves it
        dm = CorpusDataModule(str(dest), download=True, url=[dead, url], sha256=sums, files=WT2, batch_size=2,
                              dir_env="WT2_DIR")
        dm.setup()
        assert _leftovers(dest) == sorted([archive.name, *WT2.values()])
        for split, name in WT2.items():
            assert (dest / name).read_bytes() == (source / f"{split}.txt").read_bytes()
        (dest / "wiki.test.tokens").unlink()  # a lost split comes back from the kept archive, no download
        server.shutdown()
        dm.prepare_data()
        assert (dest / "wiki.test.tokens").is_file()
    finally:
        server.shutdown()


def test_archive_checksum_mismatch_on_every_mirror_says_how_to_provide_the_files(tmp_path):
    _, _, sums = _zip_corpus(tmp_path)
    server, url = _serve(tmp_path / "www")
    try:
        dest = tmp_path / "wt2"
        dm = CorpusDataModule(str(dest), download=True, url=[url, url], sha256={"wikitext-2-v1.zip": "0" * 64},
                              files=WT2, dir_env="WT2_DIR")
        with pytest.raises(DataError) as exc:
            dm.prepare_data()
        msg = str(exc.value)
        assert msg.count("checksum mismatch") == 2 and "wiki.train.tokens" in msg and "WT2_DIR" in msg
        assert _leftovers(dest) == []
    finally:
        server.shutdown()


def test_corrupt_archive_is_one_clear_error(tmp_path):
    dest = tmp_path / "wt2"
    dest.mkdir()
    (dest / "wikitext-2-v1.zip").write_bytes(b"not a zip")
    dm = CorpusDataModule(str(dest), download=True, url="http://127.0.0.1:9/none", sha256={"wikitext-2-v1.zip": "0" * 64},
                          files=WT2)
    with pytest.raises(DataError, match="not a valid zip archive"):
        dm.prepare_data()
