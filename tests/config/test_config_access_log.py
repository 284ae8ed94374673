"""The listener `access_log` block: decoding, defaults, round trip and every rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omnirelay.config import config_to_dict, load_config
from omnirelay.config.model import ACCESS_LOG_FIELDS, AccessLog

Doc = dict[str, Any]
Issues = Callable[[Any], list[str]]
AL = "spec.listeners[0].access_log"


def _with(doc: Doc, block: Any) -> Doc:
    doc["spec"]["listeners"][0]["access_log"] = block
    return doc


def test_defaults_and_absent(doc: Doc) -> None:
    assert load_config(doc).spec.listeners[0].access_log is None
    cfg = load_config(_with(doc, {"path": "/tmp/a.log"}))
    assert cfg.spec.listeners[0].access_log == AccessLog(path="/tmp/a.log")
    al = cfg.spec.listeners[0].access_log
    assert (al.format, al.template, al.sample, al.max_per_second, al.fields) == (
        "json", None, 1.0, 0, None)


def test_full_block_round_trips(doc: Doc) -> None:
    block = {"path": "-", "format": "text", "template": "%STATUS% %path% 100%%",
             "sample": 0.25, "max_per_second": 50, "fields": ["status", "path"]}
    cfg = load_config(_with(doc, block))
    al = cfg.spec.listeners[0].access_log
    assert al == AccessLog(path="-", format="text", template="%STATUS% %path% 100%%",
                           sample=0.25, max_per_second=50, fields=("status", "path"))
    assert load_config(config_to_dict(cfg)) == cfg
    assert config_to_dict(cfg)["spec"]["listeners"][0]["access_log"]["sample"] == 0.25


def test_rules(doc: Doc, issues_of: Issues) -> None:
    def bad(block: Any) -> list[str]:
        import copy
        return issues_of(_with(copy.deepcopy(doc), block))

    assert bad({}) == [f"{AL}.path: required field is missing"] or bad({})[0].startswith(f"{AL}")
    assert bad({"path": "x", "format": "xml"}) == [
        f"{AL}.format: unsupported value 'xml' (allowed: json, text)"]
    assert bad({"path": "x", "sample": 1.5}) == [
        f"{AL}.sample: must be between 0 and 1, got 1.5"]
    assert bad({"path": "x", "max_per_second": -1})[0].startswith(f"{AL}.max_per_second:")
    assert bad({"path": "x", "format": "text", "template": "%NOPE%"})[0].startswith(
        f"{AL}.template: unknown field %NOPE%")
    assert bad({"path": "x", "format": "text", "template": "50% off"}) == [
        f"{AL}.template: unbalanced '%' (write %% for a literal percent sign)"]
    assert bad({"path": "x", "template": "%status%"}) == [
        f"{AL}.template: only used with format 'text' (JSON records name their fields)"]
    assert bad({"path": "x", "fields": ["status", "bogus"]})[0].startswith(
        f"{AL}.fields[1]: unsupported value 'bogus'")
    assert bad({"path": "x", "fields": ["status", "status"]}) == [
        f"{AL}.fields[1]: field 'status' is listed twice (first at index 0)"]
    assert bad({"path": "x", "fields": []}) == [
        f"{AL}.fields: at least one field is required (omit 'fields' for all)"]
    assert bad({"path": "x", "extra": 1})[0].startswith(f"{AL}.extra")


def test_http_only(doc: Doc, issues_of: Issues) -> None:
    lst = doc["spec"]["listeners"][0]
    lst.update(protocol="tcp", tcp={"cluster": "api"}, access_log={"path": "x"})
    assert issues_of(doc) == [
        "spec.listeners[0].access_log: only allowed on 'http' listeners (protocol is 'tcp')"]


def test_field_names_are_known() -> None:
    assert "status" in ACCESS_LOG_FIELDS and len(set(ACCESS_LOG_FIELDS)) == len(ACCESS_LOG_FIELDS)
