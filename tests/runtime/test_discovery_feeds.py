"""Endpoint lists from outside the config (omnirelay.config.endpoints) and the discovery
feeds (omnirelay.discovery) against a recording sink instead of a live TableBuilder."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from harness import eventually

from omnirelay.config import ConfigError, Endpoint, load_config
from omnirelay.config.endpoints import decode_endpoints, load_endpoints_file, parse_endpoints
from omnirelay.config.model import Cluster, Config, Discovery, Metadata, Spec
from omnirelay.discovery import ApiFeed, Feeds, FileFeed

SLOW = 3600.0  # a poll interval that never elapses during a test: polls are driven by hand


def _issues(document: Any, source: str = "eps") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        decode_endpoints(document, source)
    return [str(issue) for issue in caught.value.issues]


# --------------------------------------------------------------------------- decode_endpoints


def test_decode_valid_endpoints() -> None:
    eps = decode_endpoints(
        [{"address": "10.0.0.1", "port": 8080}, {"address": "api.internal", "port": 80,
                                                  "weight": 3}], "eps")
    assert eps == (Endpoint("10.0.0.1", 8080), Endpoint("api.internal", 80, weight=3))
    assert decode_endpoints((), "eps") == ()  # a discovery cluster may have no endpoints


def test_decode_reports_every_issue_with_its_path() -> None:
    assert _issues([
        {"address": "10.0.0.1", "port": 0},
        {"address": "a b", "port": 1, "wieght": 2},
        3,
        {"port": 80},
    ], "eps.yaml") == [
        "eps.yaml[0].port: must be between 1 and 65535, got 0",
        "eps.yaml[1].wieght: unknown field (did you mean 'weight'?)",
        "eps.yaml[1].address: invalid address 'a b': expected an IP address or DNS name",
        "eps.yaml[2]: expected mapping, got integer",
        "eps.yaml[3].address: missing required field",
    ]


def test_decode_rejects_duplicates_and_non_lists() -> None:
    assert _issues([{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.1", "port": 80}]) \
        == ["eps[1]: duplicate endpoint 10.0.0.1:80 (first at eps[0])"]
    assert _issues({"address": "10.0.0.1", "port": 80}) == ["eps: expected list, got mapping"]
    assert _issues(None) == ["eps: expected list, got null"]


BAD_LISTS = [
    [{"address": "10.0.0.1", "port": 70000}],
    [{"address": "10.0.0.1", "port": "80"}],
    [{"address": "", "port": 80}, {"address": "10.0.0.2"}],
    [{"address": "10.0.0.1", "port": 80, "weight": 0}],
    [{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.1", "port": 80}],
    [{"address": "10.0.0.1", "port": 80, "colour": "red"}],
    ["10.0.0.1:80"],
]


@pytest.mark.parametrize("endpoints", BAD_LISTS)
def test_decode_matches_the_cluster_endpoints_rules(endpoints: list) -> None:
    """The same rules and messages as spec.clusters[i].endpoints, under another prefix."""
    prefix = "spec.clusters[0].endpoints"
    doc = {"spec": {
        "listeners": [{"name": "l", "address": "127.0.0.1", "port": 0}],
        "routes": [{"name": "r", "match": {}, "cluster": "c"}],
        "clusters": [{"name": "c", "endpoints": endpoints}],
    }}
    with pytest.raises(ConfigError) as caught:
        load_config(doc)
    expected = [str(i).replace(prefix, "eps") for i in caught.value.issues
                if str(i).startswith(prefix)]
    assert expected
    assert _issues(endpoints) == expected


def test_parse_and_load_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "eps.yaml"
    yaml_file.write_text("- {address: 10.0.0.1, port: 80}\n- address: 10.0.0.2\n  port: 81\n")
    assert load_endpoints_file(yaml_file) == (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 81))
    json_file = tmp_path / "eps.json"
    json_file.write_text('[{"address": "10.0.0.3", "port": 82}]')
    assert load_endpoints_file(str(json_file)) == (Endpoint("10.0.0.3", 82),)

    with pytest.raises(ConfigError) as caught:
        parse_endpoints("- [unclosed", "eps.yaml")
    assert str(caught.value).startswith("eps.yaml: invalid YAML: ")
    with pytest.raises(ConfigError) as caught:
        parse_endpoints("address: x\n", "eps.json", json_only=True)
    assert str(caught.value).startswith("eps.json: invalid JSON: ")
    with pytest.raises(ConfigError) as caught:
        load_endpoints_file(tmp_path / "missing.yaml")
    assert str(caught.value) == (f"{tmp_path / 'missing.yaml'}: cannot read endpoints: "
                                 "No such file or directory")
    with pytest.raises(ConfigError) as caught:
        parse_endpoints("[" * 100000, "deep.json", json_only=True)
    assert "nested too deeply" in str(caught.value)


# --------------------------------------------------------------------------- feeds


class Sink:
    """Stands in for TableBuilder.update_endpoints."""

    def __init__(self, clusters: tuple[str, ...] = ("c",)) -> None:
        self.clusters = set(clusters)
        self.updates: list[tuple[str, tuple[Endpoint, ...]]] = []
        self.fail: Exception | None = None

    def update_endpoints(self, cluster: str, endpoints: tuple[Endpoint, ...]) -> None:
        if self.fail is not None:
            raise self.fail
        if cluster not in self.clusters:
            raise KeyError(cluster)
        self.updates.append((cluster, tuple(endpoints)))

    def last(self, cluster: str = "c") -> tuple[Endpoint, ...] | None:
        lists = [eps for name, eps in self.updates if name == cluster]
        return lists[-1] if lists else None


def write_endpoints(path: Path, text: str) -> None:
    """Atomic replace, as operators are told to do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def eps_yaml(*ports: int) -> str:
    return "".join(f"- {{address: 127.0.0.1, port: {p}}}\n" for p in ports)


def file_feed(path: Path, sink: Sink, interval: float = SLOW) -> FileFeed:
    spec = Discovery(type="file", path=str(path), interval=interval)
    return FileFeed("c", spec, lambda eps: sink.update_endpoints("c", eps))


async def test_file_feed_reads_on_start_and_on_change(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    write_endpoints(path, eps_yaml(1001))
    sink = Sink()
    feed = file_feed(path, sink)
    feed.start()
    try:
        assert sink.updates == [("c", (Endpoint("127.0.0.1", 1001),))]  # before start returns
        feed.poll()
        assert len(sink.updates) == 1  # unchanged file: nothing delivered

        write_endpoints(path, eps_yaml(1002, 1003))
        feed.poll()
        assert sink.last() == (Endpoint("127.0.0.1", 1002), Endpoint("127.0.0.1", 1003))

        # Same list, different text: read, but nothing to deliver.
        write_endpoints(path, "# same\n" + eps_yaml(1002, 1003))
        feed.poll()
        assert len(sink.updates) == 2
        st = feed.status()
        assert st["type"] == "file" and st["source"] == str(path)
        assert st["endpoints"] == 2 and st["updates"] == 2 and st["last_update"] is not None
        assert st["last_error"] is None and st["failing"] is False
    finally:
        feed.stop()
        await feed.wait_stopped()


async def test_file_feed_sees_a_change_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    path.write_text(eps_yaml(2001))
    sink = Sink()
    feed = file_feed(path, sink)
    feed.start()
    try:
        st = path.stat()
        path.write_text(eps_yaml(2002))  # same length, in place
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime as the first read
        feed.poll()
        assert sink.last() == (Endpoint("127.0.0.1", 2002),)
    finally:
        feed.stop()
        await feed.wait_stopped()


async def test_file_feed_keeps_last_good_endpoints_and_logs_each_problem_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "omnirelay.discovery")
    path = tmp_path / "eps.yaml"
    sink = Sink()
    feed = file_feed(path, sink)
    feed.start()
    try:
        # Missing at start: nothing delivered, a problem recorded.
        assert sink.updates == []
        st = feed.status()
        assert st["failing"] is True and st["endpoints"] is None
        assert st["last_error"] == f"{path}: no such file"
        feed.poll()

        write_endpoints(path, eps_yaml(3001))
        feed.poll()
        assert sink.last() == (Endpoint("127.0.0.1", 3001),)
        assert feed.status()["failing"] is False

        write_endpoints(path, "- {address: 127.0.0.1, port: 0}\n")
        for _ in range(3):
            feed.poll()
        write_endpoints(path, "- {address: 127.0.0.1, port: 0}\n")  # same problem again
        feed.poll()
        write_endpoints(path, "- [unclosed\n")
        feed.poll()
        path.unlink()
        feed.poll()
        feed.poll()
        path.mkdir()  # unreadable as a file
        feed.poll()
        path.rmdir()
        assert sink.updates == [("c", (Endpoint("127.0.0.1", 3001),))]
        st = feed.status()
        assert st["failing"] is True and st["endpoints"] == 1

        write_endpoints(path, eps_yaml(3001))  # back, with the same list: nothing to apply
        feed.poll()
        assert len(sink.updates) == 1
        assert feed.status()["failing"] is False
        assert feed.status()["last_error"].startswith(f"{path}: cannot read endpoints: ")
    finally:
        feed.stop()
        await feed.wait_stopped()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    kept = "(keeping the last 1 discovered endpoints)"
    assert len(warnings) == 5
    assert warnings[0] == f"cluster c: {path}: no such file (no discovered endpoints yet)"
    assert warnings[1] == (f"cluster c: invalid endpoints: {path}[0].port: must be between 1 "
                           f"and 65535, got 0 {kept}")
    assert warnings[2].startswith(f"cluster c: invalid endpoints: {path}: invalid YAML: ")
    assert warnings[2].endswith(kept)
    assert warnings[3] == f"cluster c: {path}: no such file {kept}"
    assert warnings[4] == f"cluster c: {path}: cannot read endpoints: Is a directory {kept}"


async def test_file_feed_survives_a_failing_apply(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    write_endpoints(path, eps_yaml(4001))
    sink = Sink()
    sink.fail = RuntimeError("boom")
    feed = file_feed(path, sink)
    feed.start()  # does not raise
    try:
        assert feed.status()["last_error"] == "cannot apply endpoints: RuntimeError: boom"
        sink.fail = None
        feed.poll()  # the same file is tried again
        assert sink.last() == (Endpoint("127.0.0.1", 4001),)
        assert feed.status()["failing"] is False
    finally:
        feed.stop()
        await feed.wait_stopped()


async def test_file_feed_polls_in_the_background_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "eps.json"
    write_endpoints(path, '[{"address": "127.0.0.1", "port": 5001}]')
    sink = Sink()
    feed = file_feed(path, sink, interval=0.01)
    feed.start()
    write_endpoints(path, '[{"address": "127.0.0.1", "port": 5002}]')
    await eventually(lambda: sink.last() == (Endpoint("127.0.0.1", 5002),), 5.0, "new list")
    feed.stop()
    write_endpoints(path, '[{"address": "127.0.0.1", "port": 5003}]')
    feed.poll()  # a stopped feed never applies
    await feed.wait_stopped()
    assert sink.last() == (Endpoint("127.0.0.1", 5002),)


async def test_api_feed_push() -> None:
    sink = Sink()
    feed = ApiFeed("c", Discovery(type="api"), lambda eps: sink.update_endpoints("c", eps))
    with pytest.raises(RuntimeError, match="stopped"):
        feed.push((Endpoint("127.0.0.1", 1),))
    feed.start()
    feed.push((Endpoint("127.0.0.1", 1),))
    assert sink.updates == [("c", (Endpoint("127.0.0.1", 1),))]
    assert feed.status()["source"] == "api" and feed.status()["endpoints"] == 1
    sink.fail = KeyError("c")
    with pytest.raises(KeyError):
        feed.push(())
    assert feed.status()["failing"] is True


def _config(**discovery: Discovery | None) -> Config:
    clusters = tuple(Cluster(name, (), discovery=d) for name, d in discovery.items())
    return Config(Metadata(), Spec(listeners=(), routes=(), clusters=clusters))


async def test_feeds_follow_the_config(tmp_path: Path) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    write_endpoints(one, eps_yaml(6001))
    write_endpoints(two, eps_yaml(6002))
    sink = Sink(("a", "b", "s"))
    seen: list[str] = []
    feeds = Feeds(on_update=seen.append)
    file_one = Discovery(type="file", path=str(one), interval=SLOW)
    api = Discovery(type="api")

    feeds.sync(_config(a=file_one, b=api, s=None), sink)
    assert set(feeds.status()) == {"a", "b"}
    assert sink.last("a") == (Endpoint("127.0.0.1", 6001),) and seen == ["a"]
    first_a = feeds["a"]
    feeds.push(sink, "b", api, (Endpoint("127.0.0.1", 6010),))
    assert sink.last("b") == (Endpoint("127.0.0.1", 6010),) and seen == ["a", "b"]
    with pytest.raises(ValueError, match="file discovery, not through the API"):
        feeds.push(sink, "a", file_one, ())

    # Unchanged specs keep their feeds; an api spec that only changes interval keeps it too.
    feeds.sync(_config(a=file_one, b=Discovery(type="api", interval=5.0), s=None), sink)
    assert feeds["a"] is first_a and feeds["b"].status()["updates"] == 1

    # A changed path restarts the feed (the old one stops at once); a cluster that lost its
    # discovery loses its feed.
    feeds.sync(_config(a=Discovery(type="file", path=str(two), interval=SLOW), b=None), sink)
    assert feeds["a"] is not first_a and not first_a.running
    assert sink.last("a") == (Endpoint("127.0.0.1", 6002),)
    assert "b" not in feeds and set(feeds.status()) == {"a"}

    await feeds.close()
    assert feeds.status() == {}
    assert not first_a.running


async def test_feeds_push_before_sync_is_kept_by_sync() -> None:
    sink = Sink()
    feeds = Feeds()
    api = Discovery(type="api")
    feeds.push(sink, "c", api, (Endpoint("127.0.0.1", 7001),))
    feed = feeds["c"]
    feeds.sync(_config(c=api), sink)
    assert feeds["c"] is feed and feed.status()["endpoints"] == 1
    await feeds.close()
