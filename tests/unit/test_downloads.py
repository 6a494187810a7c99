"""Remote archives: allow-list, address checks at every redirect, deadline, size cap, temp files,
and downloads that never hold up the management API. A local HTTP server plays the remote
host (127.0.0.2, allowed explicitly) and the internal service it redirects to (loopback)."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.common.management_args import ManagementArgs
from deployments.management import downloads, intake
from deployments.management.downloads import DownloadPolicy, download, parse_allowed
from deployments.management.manager import ModelManager
from deployments.management.register_params import RegisterParams
from handlers.errors import BadInputError, DownloadArchiveError
from tests.fixtures.management import FakeServe, make_archive
from tests.fixtures.web import Site, serving

REMOTE = "127.0.0.2"  # "the internet": its network is allowed explicitly in these tests


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Site]:
    store = tmp_path / "remote"
    for site in serving(REMOTE):
        site.files["ok.zip"] = (store / make_archive(store, "remote", "1.0")).read_bytes()
        yield site


@pytest.fixture
def internal() -> Iterator[Site]:
    yield from serving("127.0.0.1")


def policy(**overrides: object) -> DownloadPolicy:
    values: dict = {
        "allowed_urls": [r"http://(127\.0\.0\.[12]|localhost):\d+/.*"],
        "allowed_networks": [f"{REMOTE}/32"],
        "timeout_s": 10.0,
        "max_bytes": 1_000_000,
    }
    values.update(overrides)
    return DownloadPolicy.create(**values)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_an_allowed_download_arrives_whole_under_a_new_name(remote: Site, tmp_path: Path) -> None:
    path = download(f"{remote.base}/ok.zip", tmp_path / "dl", policy())
    assert path.read_bytes() == remote.files["ok.zip"] and path.name.endswith("-ok.zip")
    assert leftovers(tmp_path / "dl") == [path.name]


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example/x.zip",
        "http://127.0.0.2:1@evil.example/ok.zip",  # the allowed host as a user name
        "http://127.0.0.2:80@evil.example:80/x.zip",
        "ftp://127.0.0.2:21/ok.zip",
        "file:///etc/passwd",
        "http://127.0.0.2:99999/x.zip",  # not a port
    ],
)
def test_urls_are_matched_as_parsed(url: str) -> None:
    with pytest.raises(BadInputError, match=r"not allowed|not a valid URL"):
        parse_allowed(url, policy(allowed_urls=[r"http://127\.0\.0\.2[:@].*", r".*ok\.zip"]))


def test_what_the_patterns_see_is_the_url_as_parsed() -> None:
    hop = parse_allowed("HTTP://127.0.0.2:8080/a/ok.zip?v=1#frag", policy())
    assert (hop.url, hop.host, hop.port, hop.target) == (
        "http://127.0.0.2:8080/a/ok.zip?v=1", "127.0.0.2", 8080, "/a/ok.zip?v=1",
    )  # fmt: skip


def test_loopback_is_refused_even_when_the_pattern_allows_it(internal: Site, tmp_path: Path) -> None:
    internal.files["secret.zip"] = b"internal"
    with pytest.raises(DownloadArchiveError, match=r"127\.0\.0\.1, a loopback address"):
        download(f"{internal.base}/secret.zip", tmp_path / "dl", policy())
    assert internal.requested == [] and leftovers(tmp_path / "dl") == []


def test_a_redirect_to_loopback_is_refused(remote: Site, internal: Site, tmp_path: Path) -> None:
    internal.files["secret.zip"] = b"internal"
    port = internal.server_address[1]
    for target in (f"http://localhost:{port}/secret.zip", f"http://127.0.0.1:{port}/secret.zip"):
        with pytest.raises(DownloadArchiveError, match="loopback address"):
            download(f"{remote.base}/redirect?to={target}", tmp_path / "dl", policy())
    assert internal.requested == []  # never reached
    with pytest.raises(BadInputError, match="not allowed"):  # nor anywhere the allow-list omits
        download(f"{remote.base}/redirect?to=http://other.example/x.zip", tmp_path / "dl", policy())
    assert leftovers(tmp_path / "dl") == []


def test_redirects_within_the_rules_are_followed(remote: Site, tmp_path: Path) -> None:
    path = download(f"{remote.base}/redirect?to=/ok.zip", tmp_path / "dl", policy())
    assert path.read_bytes() == remote.files["ok.zip"]


def test_the_whole_download_has_one_deadline(remote: Site, tmp_path: Path, monkeypatch) -> None:
    # A clock that moves 0.25 s each time the download looks at it, and a count of the reads.
    ticks = iter(range(10_000))
    monkeypatch.setattr(downloads, "time", SimpleNamespace(monotonic=lambda: 0.25 * next(ticks)))
    reads: list[int] = []
    real_read1 = http.client.HTTPResponse.read1

    def counted(self: http.client.HTTPResponse, size: int = -1) -> bytes:
        reads.append(size)
        return real_read1(self, size)

    monkeypatch.setattr(http.client.HTTPResponse, "read1", counted)
    with pytest.raises(DownloadArchiveError, match="not done within 1s"):
        download(f"{remote.base}/trickle.zip", tmp_path / "dl", policy(timeout_s=1.0))
    # A byte every 0.1 s for 10 s: without the one deadline, 100 reads.
    assert 1 <= len(reads) <= 3
    assert leftovers(tmp_path / "dl") == []


@pytest.mark.parametrize("path", ["/huge.zip", "/endless.zip"])
def test_the_size_cap(remote: Site, tmp_path: Path, path: str) -> None:
    with pytest.raises(DownloadArchiveError, match="over the limit of 1000000 bytes"):
        download(f"{remote.base}{path}", tmp_path / "dl", policy())
    assert leftovers(tmp_path / "dl") == []


@pytest.mark.parametrize("path", ["/pub/..", "/missing.zip", "/"])
def test_odd_or_missing_urls_are_400s(remote: Site, tmp_path: Path, path: str) -> None:
    with pytest.raises(DownloadArchiveError, match="HTTP 404"):
        download(f"{remote.base}{path}", tmp_path / "dl", policy())
    assert leftovers(tmp_path / "dl") == []


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelManager:
    monkeypatch.delenv("RAYTORCH_STATE_DIR", raising=False)
    monkeypatch.delenv("RAYTORCH_MODEL_STORE", raising=False)
    settings = ManagementArgs(
        state_dir=str(tmp_path / "state"),
        model_store=str(tmp_path / "store"),
        propagation_s=0,
        trusted_modules=["tests.fixtures"],
        allowed_urls=[r"http://127\.0\.0\.2:\d+/.*"],
        allowed_networks=[f"{REMOTE}/32"],
    )
    return ModelManager(settings, FakeServe())


def test_a_failed_download_leaves_the_model_store_alone(manager: ModelManager, remote: Site) -> None:
    local = make_archive(manager.model_store, "m", "1.0", "ok.zip")
    before = (manager.model_store / local).read_bytes()
    for url in (f"{remote.base}/missing/ok.zip", f"{remote.base}/pub/.."):
        with pytest.raises(DownloadArchiveError):
            asyncio.run(manager.register(RegisterParams(url=url)))
    assert (manager.model_store / local).read_bytes() == before
    assert leftovers(manager.downloads_dir) == []


def test_a_download_does_not_hold_up_other_management_calls(
    manager: ModelManager, remote: Site, monkeypatch
) -> None:
    fetching: list[int] = []  # the thread each download ran on
    others: list[bool] = []  # whether another call ran while the download was going on

    def spy(*args: Any, **kwargs: Any) -> Path:
        fetching.append(threading.get_ident())
        return downloads.download(*args, **kwargs)

    monkeypatch.setattr(intake, "download", spy)

    async def scenario() -> tuple[int, tuple[int, dict]]:
        registering = asyncio.ensure_future(manager.register(RegisterParams(url=f"{remote.base}/slow.zip")))
        while not registering.done():
            await asyncio.sleep(0.01)  # any other call: a list, a describe, a routing poll
            others.append(bool(fetching) and "/slow.zip" in remote.requested and not registering.done())
        return threading.get_ident(), await registering

    loop_thread, (status, _) = asyncio.run(scenario())
    assert status == 200 and manager.store.defaults() == {"remote": "1.0"}
    assert fetching and loop_thread not in fetching  # downloaded on a worker thread...
    assert any(others)  # ...while the event loop went on answering
    assert leftovers(manager.downloads_dir) == []  # the unpacked copy is what counts
