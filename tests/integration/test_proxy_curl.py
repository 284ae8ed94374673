"""curl as a real client through the proxy."""
from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from harness import Origin, make_config, pattern, sha256

import omnirelay

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


async def curl(*args: str, timeout: float = 15.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", str(int(timeout)), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout + 5)
    return proc.returncode, out, err


def split_dump(out: bytes) -> tuple[list[bytes], bytes]:
    """`curl -D -` output: every response head (interim ones included), then the body."""
    heads = []
    rest = out
    while rest.startswith(b"HTTP/"):
        head, _, rest = rest.partition(b"\r\n\r\n")
        heads.append(head)
    return heads, rest


async def test_curl_get_dump_headers():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        rc, out, err = await curl("-D", "-", relay.url() + "/curl/get?q=1")
        assert rc == 0, err
        heads, body = split_dump(out)
        assert heads[-1].startswith(b"HTTP/1.1 200")
        lower = heads[-1].lower()
        assert b"\r\nvia: 1.1 omnirelay" in lower
        assert b"\r\nx-origin: origin" in lower
        info = json.loads(body)
        assert info["path"] == "/curl/get?q=1"
        assert info["method"] == "GET"


async def test_curl_two_urls_share_one_connection():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        rc, _, err = await curl(relay.url() + "/one", relay.url() + "/two")
        assert rc == 0, err
        assert [s.path for s in origin.seen] == ["/one", "/two"]
        assert relay.stats()["listeners"]["edge"]["downstream_cx_total"] == 1


async def test_curl_chunked_upload_of_2mib_file(tmp_path):
    data = pattern(2 << 20, seed=7)
    f = tmp_path / "upload.bin"
    f.write_bytes(data)
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        rc, out, err = await curl("-D", "-", "--data-binary", f"@{f}",
                                  "-H", "Transfer-Encoding: chunked",
                                  "-H", "Content-Type: application/octet-stream",
                                  relay.url() + "/curl/upload")
        assert rc == 0, err
        heads, body = split_dump(out)
        assert heads[-1].startswith(b"HTTP/1.1 200"), heads
        info = json.loads(body)
        assert info["method"] == "POST"
        assert info["body_len"] == len(data)
        assert info["sha256"] == sha256(data)
        seen = origin.seen[0].headers
        assert "expect" not in seen


async def test_curl_content_length_upload_and_big_download(tmp_path):
    data = pattern(3 << 20, seed=3)
    f = tmp_path / "up.bin"
    f.write_bytes(data)
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        rc, out, err = await curl("--data-binary", f"@{f}", relay.url() + "/len")
        assert rc == 0, err
        info = json.loads(out)
        assert info["body_len"] == len(data) and info["sha256"] == sha256(data)
        rc, out, err = await curl(relay.url() + f"/chunked/{5 << 20}")
        assert rc == 0, err
        assert out == pattern(5 << 20)
