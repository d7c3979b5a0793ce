"""The Banking77 loader: real CSV parsing, verbatim labels, checksums, verified downloads."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BANKING77_DIR
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from synth_middleware.demos.banking77 import data
from synth_middleware.offline.container import InProcessServer


@pytest.fixture(scope="module")
def ds() -> data.Banking77:
    return data.load(BANKING77_DIR)


def test_counts_and_labels(ds: data.Banking77) -> None:
    assert len(ds.train) == 10_003
    assert len(ds.test) == 3_080
    assert len(ds.labels) == 77
    assert "Refund_not_showing_up" in ds.labels
    assert "reverted_card_payment?" in ds.labels
    assert {e.label for e in ds.train} <= set(ds.labels)
    assert any(e.label == "reverted_card_payment?" for e in ds.test)
    per_label = {label: 0 for label in ds.labels}
    for e in ds.test:
        per_label[e.label] += 1
    assert set(per_label.values()) == {40}


def test_embedded_newlines_are_one_record(ds: data.Banking77) -> None:
    # "\nI can't seem to be able to use my card\n\n\n" spans several physical lines
    hits = [e for e in ds.train if e.text == "I can't seem to be able to use my card"]
    assert hits and hits[0].label == "card_not_working"
    assert not any(e.text.startswith("\n") or e.text.endswith("\r") for e in ds.train)


def test_read_csv_handles_crlf_quotes_and_newlines(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(
        b'text,category\r\n"two\r\nlines, and a comma",Refund_not_showing_up\r\n'
        b'"say ""hi""",reverted_card_payment?\r\nplain,card_arrival\r\n'
    )
    rows = data.read_csv(path)
    assert [(r.text, r.label) for r in rows] == [
        ("two\r\nlines, and a comma", "Refund_not_showing_up"),
        ('say "hi"', "reverted_card_payment?"),
        ("plain", "card_arrival"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("query,label\r\nx,y\r\n")
    with pytest.raises(ValueError, match="header"):
        data.read_csv(bad)


def test_shuffled_is_fixed_per_seed(ds: data.Banking77) -> None:
    a, b = ds.shuffled("train", 0), ds.shuffled("train", 0)
    assert a == b and a != ds.shuffled("train", 1)
    assert sorted(a, key=lambda e: (e.label, e.text)) == sorted(
        ds.train, key=lambda e: (e.label, e.text)
    )


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    for name in data.FILES:
        shutil.copy(BANKING77_DIR / name, tmp_path / name)
    with (tmp_path / "train.csv").open("ab") as fh:
        fh.write(b"tampered,card_arrival\r\n")
    with pytest.raises(data.ChecksumError, match=r"train\.csv.*does not match"):
        data.load(tmp_path)
    (tmp_path / "train.csv").unlink()
    with pytest.raises(data.DatasetNotFound, match=r"missing train\.csv"):
        data.load(tmp_path)


def test_env_var_and_cache_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANKING77_DIR", str(BANKING77_DIR))
    assert data.resolve_data_dir() == BANKING77_DIR
    monkeypatch.delenv("BANKING77_DIR")
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    assert data.cache_dir() == tmp_path / "cache" / "banking77"
    with pytest.raises(data.DatasetNotFound, match="downloads are off"):
        data.resolve_data_dir(allow_download=False)


@pytest.fixture
def mirror() -> Iterator[tuple[InProcessServer, dict[str, bytes]]]:
    files = {name: (BANKING77_DIR / name).read_bytes() for name in data.FILES}

    async def serve(request: Request) -> Response:
        body = files.get(request.path_params["name"])
        if body is None:
            return Response(status_code=404)
        return Response(body, media_type="application/octet-stream")

    app = Starlette(routes=[Route("/banking_data/{name}", serve)])
    with InProcessServer(app) as srv:
        yield srv, files


def test_download_verifies_and_caches(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mirror: tuple[InProcessServer, dict[str, bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv, _ = mirror
    monkeypatch.delenv("BANKING77_DIR", raising=False)
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BANKING77_URL", f"{srv.url}/banking_data/")
    ds = data.load()
    assert ds.source == tmp_path / "banking77" and len(ds.test) == 3080
    err = capsys.readouterr().err
    assert "downloading" in err and "\r" not in err  # progress lines, no bar off a terminal
    # a second load uses the cache, even with the mirror gone
    monkeypatch.setenv("BANKING77_URL", "http://127.0.0.1:9/")
    assert len(data.load().labels) == 77


def test_tampered_download_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mirror: tuple[InProcessServer, dict[str, bytes]],
) -> None:
    srv, files = mirror
    files["test.csv"] = files["test.csv"].replace(b"card_arrival", b"card_arrivaI", 1)
    monkeypatch.delenv("BANKING77_DIR", raising=False)
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BANKING77_URL", f"{srv.url}/banking_data/")
    with pytest.raises(data.ChecksumError, match="refusing"):
        data.load(progress=False)
    cached = tmp_path / "banking77"
    assert not (cached / "test.csv").exists()
    assert not [p for p in cached.iterdir() if p.name.startswith(".")]  # no temp files left


def test_unreachable_download_explains_the_offline_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BANKING77_DIR", raising=False)
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BANKING77_URL", "http://127.0.0.1:9/")
    with pytest.raises(data.DatasetNotFound, match="--data-dir"):
        data.load(progress=False)
