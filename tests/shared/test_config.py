"""Typed configuration from YAML + LOOPTOOL_* environment, with one-line errors."""

from __future__ import annotations

import textwrap

import pytest

from pydantic import BaseModel, Field

from looptool.shared.config import ConfigError, LoopToolConfig, env_overrides, load_config, merge_onto


def write(tmp_path, text: str, name: str = "looptool.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_defaults_without_file():
    cfg = load_config(environ={})
    assert isinstance(cfg, LoopToolConfig)
    assert cfg.storage.backend == "local" and cfg.services.inference.port == 50051
    assert cfg.judge is None and cfg.services.judge is None


def test_yaml_file(tmp_path):
    p = write(
        tmp_path,
        """
        storage:
          backend: s3
          s3: {endpoint: "127.0.0.1:9000", bucket: loops, access_key: ak, secret_key: sk}
        services:
          inference: {port: 7001, metrics_port: 0}
        inference:
          backend: openai
          base_url: http://localhost:8000/v1
          max_batch_size: 4
        log:
          json: true
        """,
    )
    cfg = load_config(p, environ={})
    assert cfg.storage.backend == "s3" and cfg.storage.s3.bucket == "loops"
    assert cfg.storage.s3.secret_key.get_secret_value() == "sk" and "sk" not in repr(cfg)
    assert cfg.services.inference.port == 7001 and cfg.services.inference.address == "127.0.0.1:7001"
    assert cfg.services.toolsim.port == 50052  # untouched defaults stay
    assert cfg.inference.backend == "openai" and cfg.inference.max_batch_size == 4
    assert cfg.log.json_format is True
    assert cfg.storage.base_uri() == "s3://loops"


def test_env_overrides_yaml(tmp_path):
    p = write(tmp_path, "services:\n  inference: {port: 7001, host: 0.0.0.0}\n")
    env = {
        "LOOPTOOL_SERVICES__INFERENCE__PORT": "7002",
        "LOOPTOOL_STORAGE__S3__ENDPOINT": "http://127.0.0.1:9000",
        "LOOPTOOL_STORAGE__S3__SECRET_KEY": "0123",  # not YAML-parsed into the octal int 83
        "LOOPTOOL_STORAGE__S3__BUCKET": "null",  # a string, not None
        "LOOPTOOL_INFERENCE__GPU_MEMORY_UTILIZATION": "0.5",
        "LOOPTOOL_LOG__JSON": "true",
        "LOOPTOOL_SERVICES__JUDGE__PORT": "7010",  # creates the optional section
        "LOOPTOOL_S3_ENDPOINT": "ignored-here",  # no "__": not a field override
        "OTHER__THING": "x",
    }
    cfg = load_config(p, environ=env)
    assert cfg.services.inference.port == 7002 and cfg.services.inference.host == "0.0.0.0"
    assert cfg.storage.s3.endpoint == "http://127.0.0.1:9000"
    assert cfg.storage.s3.secret_key.get_secret_value() == "0123"
    assert cfg.storage.s3.bucket == "null"
    assert cfg.inference.gpu_memory_utilization == 0.5
    assert cfg.log.json_format is True
    assert cfg.services.judge is not None and cfg.services.judge.port == 7010


def test_env_override_of_one_field_keeps_the_sections_other_defaults():
    # issue 12: the host alone used to drop toolsim's default ports (random port and metrics port)
    cfg = load_config(environ={"LOOPTOOL_SERVICES__TOOLSIM__HOST": "0.0.0.0"})
    assert cfg.services.toolsim.host == "0.0.0.0"
    assert (cfg.services.toolsim.port, cfg.services.toolsim.metrics_port) == (50052, 9102)
    assert cfg.services.inference.port == 50051  # siblings untouched
    cfg = load_config(environ={"LOOPTOOL_SERVICES__TRAINER__WORKERS": "2", "LOOPTOOL_TRAINER__WORKDIR": "/pvc"})
    assert cfg.services.trainer.workers == 2
    assert (cfg.services.trainer.port, cfg.services.trainer.metrics_port, cfg.services.trainer.host) == (50055, 9105, "127.0.0.1")
    assert cfg.trainer.workdir == "/pvc"
    assert load_config(environ={}).trainer.workdir == ".looptool/trainer"


def test_yaml_and_env_merge_per_field_onto_defaults(tmp_path):
    p = write(tmp_path, "services:\n  toolsim: {port: 6000, workers: 2}\n  expander: {host: 0.0.0.0}\n")
    env = {"LOOPTOOL_SERVICES__TOOLSIM__PORT": "6001", "LOOPTOOL_SERVICES__TOOLSIM__HOST": "10.0.0.1"}
    t = load_config(p, environ=env).services
    assert (t.toolsim.port, t.toolsim.host, t.toolsim.workers, t.toolsim.metrics_port) == (6001, "10.0.0.1", 2, 9102)
    assert (t.expander.host, t.expander.port, t.expander.metrics_port) == ("0.0.0.0", 50054, 9104)  # YAML + defaults
    assert t.judge is None


class _Leaf(BaseModel):
    a: int = 1
    b: int = 2


class _Mid(BaseModel):
    leaf: _Leaf = Field(default_factory=lambda: _Leaf(b=20))
    tags: dict[str, str] = Field(default_factory=lambda: {"x": "1"})


class _Root(BaseModel):
    mid: _Mid = Field(default_factory=_Mid)
    pools: dict[str, _Leaf] = Field(default_factory=lambda: {"gpu": _Leaf(a=8, b=80)})
    maybe: _Leaf | None = None


def test_merge_onto_every_nested_model_and_dict_of_models():
    defaults = _Root().model_dump(by_alias=True)
    over = {"mid": {"leaf": {"a": 5}, "tags": {"y": "2"}}, "pools": {"gpu": {"a": 4}, "cpu": {"b": 9}}, "maybe": {"b": 7}}
    got = _Root.model_validate(merge_onto(_Root, defaults, over))
    assert got.mid.leaf == _Leaf(a=5, b=20)  # two levels down, the parent's default kept
    assert got.mid.tags == {"y": "2"}  # a plain dict is a value: replaced, not merged
    assert got.pools == {"gpu": _Leaf(a=4, b=80), "cpu": _Leaf(a=1, b=9)}  # per entry; a new entry gets class defaults
    assert got.maybe == _Leaf(a=1, b=7)
    assert _Root.model_validate(merge_onto(_Root, defaults, {"maybe": None, "pools": {}})).pools == {"gpu": _Leaf(a=8, b=80)}


def test_env_overrides_structure():
    assert env_overrides({"LOOPTOOL_STORAGE__ROOT": "/data", "LOOPTOOL_NOPE__X": "1"}) == {"storage": {"root": "/data"}}
    assert env_overrides({"LOOPTOOL_INFERENCE__MODEL": "[a, b]"}) == {"inference": {"model": ["a", "b"]}}


def test_unknown_field_is_one_line_naming_it(tmp_path):
    p = write(tmp_path, "storage:\n  bakend: s3\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(p) in msg and "storage.bakend" in msg and "unknown field" in msg and "backend" in msg


def test_unknown_section(tmp_path):
    p = write(tmp_path, "storge: {}\n")
    with pytest.raises(ConfigError, match=r"field 'storge'.*did you mean 'storage'"):
        load_config(p, environ={})


def test_bad_value_names_field_and_value(tmp_path):
    p = write(tmp_path, "services:\n  trainer:\n    port: 99999\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    msg = str(ei.value)
    assert "services.trainer.port" in msg and "65535" in msg and "\n" not in msg


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError) as ei:
        load_config(environ={"LOOPTOOL_SERVICES__INFERENCE__PORT": "abc"})
    msg = str(ei.value)
    assert "LOOPTOOL_SERVICES__INFERENCE__PORT" in msg and "services.inference.port" in msg and "'abc'" in msg
    with pytest.raises(ConfigError, match="LOOPTOOL_STORAGE__BAKEND.*did you mean 'backend'"):
        load_config(environ={"LOOPTOOL_STORAGE__BAKEND": "s3"})


def test_secret_values_are_not_echoed(tmp_path):
    p = write(tmp_path, "storage:\n  s3:\n    secret_key: [hunter2]\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert "hunter2" not in str(ei.value) and "storage.s3.secret_key" in str(ei.value)


def test_malformed_yaml_names_the_line(tmp_path):
    p = write(tmp_path, "storage:\n  backend: local\n  root: [unclosed\nservices: {}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and "malformed YAML" in msg
    assert "line 4" in msg or "line 3" in msg
    p2 = write(tmp_path, "storage:\n\tbackend: s3\n", "tabs.yaml")
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(p2, environ={})


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), environ={})
    assert load_config(write(tmp_path, "", "empty.yaml"), environ={}).storage.backend == "local"


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, environ={})
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(binary, environ={})


def test_several_problems_one_line_each(tmp_path):
    p = write(tmp_path, "storage:\n  backend: ftp\n  extra: 1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    lines = str(ei.value).splitlines()
    assert len(lines) == 2 and any("storage.backend" in ln for ln in lines) and any("storage.extra" in ln for ln in lines)
