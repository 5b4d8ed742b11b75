"""Layered site lookup, overrides, and error messages that name file, line and field."""

import textwrap
from pathlib import Path

import pytest

from gpuhub import registry
from gpuhub.errors import ConfigError

MINI = """\
name: mini
description: a test cluster
scheduler: slurm
connection:
  host: login.example.org
partitions:
  gpu:
    partition: gpu
    gpu_model: a100
    gpus_per_node: 4
    cpus_per_gpu: 8
    max_walltime: "20:00:00"
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_local_site_is_found():
    assert "local" in registry.site_names()
    assert registry.load_site("local").scheduler == "local"


def test_user_override_changes_one_field(isolated, monkeypatch):
    extra = isolated / "extra"
    write(extra, "mini.yaml", MINI)
    monkeypatch.setenv("GPUHUB_SITES", str(extra))
    write(isolated / "config" / "sites", "mini.yaml", "connection: {user: alice}\ndefaults: {project: abc}\n")
    site = registry.load_site("mini")
    # GPUHUB_SITES is the highest layer; the user file only adds fields it does not set
    assert site.connection.user == "alice"
    assert site.connection.host == "login.example.org"
    assert site.defaults.project == "abc"
    assert site.partitions["gpu"].gpus_per_node == 4


def test_layer_order(isolated, monkeypatch):
    system, user, env1, env2 = (isolated / d for d in ("etc/sites", "config/sites", "e1", "e2"))
    write(system, "mini.yaml", MINI.replace("a test cluster", "system"))
    write(user, "mini.yaml", "description: user\n")
    monkeypatch.setenv("GPUHUB_SITES", f"{env1}:{env2}")
    write(env2, "mini.yaml", "description: env2\n")
    assert registry.load_site("mini").description == "env2"
    write(env1, "mini.yaml", "description: env1\n")  # first directory of GPUHUB_SITES wins
    assert registry.load_site("mini").description == "env1"
    assert [s.layer for s in registry.site_sources("mini")] == ["system", "user", "GPUHUB_SITES", "GPUHUB_SITES"]


def test_lists_are_replaced_not_appended(isolated):
    write(isolated / "etc" / "sites", "mini.yaml", MINI + "directives: ['--hint=nomultithread']\n")
    write(isolated / "config" / "sites", "mini.yaml", "directives: ['--mail-type=END']\n")
    assert registry.load_site("mini").directives == ["--mail-type=END"]


def test_unknown_site_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown site 'nope'; known sites: .*local") as info:
        registry.load_site("nope")
    assert info.value.exit_code == 2


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, "mini.yaml", text)
    with pytest.raises(ConfigError) as info:
        registry.load_file(path)
    assert info.value.exit_code == 2
    return info.value.message


def test_unknown_key_names_file_line_and_allowed_keys(tmp_path):
    message = error_for(tmp_path, MINI.replace("    cpus_per_gpu: 8", "    cpus_per_gpus: 8"))
    assert message.startswith(f"{tmp_path / 'mini.yaml'}:11: partitions.gpu.cpus_per_gpus: unknown key")
    assert "cpus_per_gpu," in message and "gpus_per_node" in message


def test_wrong_type_names_value(tmp_path):
    message = error_for(tmp_path, MINI.replace("gpus_per_node: 4", "gpus_per_node: four"))
    assert ":10: partitions.gpu.gpus_per_node:" in message
    assert "'four'" in message


def test_bad_walltime_explains_forms(tmp_path):
    message = error_for(tmp_path, MINI.replace('"20:00:00"', '"20 hours"'))
    assert "partitions.gpu.max_walltime" in message and "HH:MM:SS" in message


def test_bad_scheduler_lists_allowed(tmp_path):
    message = error_for(tmp_path, MINI.replace("scheduler: slurm", "scheduler: pbs"))
    assert ":3: scheduler:" in message
    for allowed in ("slurm", "htcondor", "ssh", "local"):
        assert allowed in message


def test_malformed_yaml_has_line_and_column(tmp_path):
    message = error_for(tmp_path, "name: mini\npartitions: [\n")
    assert message.startswith(f"{tmp_path / 'mini.yaml'}:3:1: invalid YAML")


def test_duplicate_keys_are_refused(tmp_path):
    message = error_for(tmp_path, MINI + "description: again\n")
    assert "duplicate key 'description' (first at line 2)" in message


def test_top_level_must_be_mapping(tmp_path):
    assert "a site file is a mapping" in error_for(tmp_path, "- a\n- b\n")


def test_name_must_match_file(tmp_path):
    assert "differs from the file name" in error_for(tmp_path, MINI.replace("name: mini", "name: other"))


def test_remote_site_needs_connection(tmp_path):
    text = MINI.replace("connection:\n  host: login.example.org\n", "")
    assert "needs a 'connection' block" in error_for(tmp_path, text)


def test_unverified_paths_must_exist(tmp_path):
    assert "names no field" in error_for(tmp_path, MINI + "unverified: [partitions.gpu.cpus_per_gpux]\n")
    site = registry.load_file(write(tmp_path, "mini.yaml", MINI + "unverified: [partitions.gpu.cpus_per_gpu]\n"))
    assert site.is_unverified("partitions.gpu.cpus_per_gpu")
    assert not site.is_unverified("partitions.gpu.gpus_per_node")


def test_slurm_directives_must_be_options(tmp_path):
    assert "must start with '-'" in error_for(tmp_path, MINI + "directives: ['hint=nomultithread']\n")


def test_account_format_fields_are_checked(tmp_path):
    text = MINI + "account: {format: '{project}@{family}'}\n"
    assert "allowed fields: project, user, gpu_model, partition" in error_for(tmp_path, text)


def test_error_in_override_names_the_override_file(isolated):
    write(isolated / "etc" / "sites", "mini.yaml", MINI)
    override = write(isolated / "config" / "sites", "mini.yaml", "connection:\n  port: ssh\n")
    with pytest.raises(ConfigError) as info:
        registry.load_site("mini")
    assert info.value.message.startswith(f"{override}:2: connection.port:")


def test_unquoted_walltime_is_not_base_60(tmp_path):
    site = registry.load_file(write(tmp_path, "mini.yaml", MINI.replace('"20:00:00"', "20:00:00")))
    assert site.partitions["gpu"].max_walltime == 20 * 3600
    plain = registry.load_file(write(tmp_path, "mini.yaml", MINI + "accounting: {normalization: {a100: 2.5}}\n"))
    assert plain.accounting.normalization == {"a100": 2.5}
    assert plain.partitions["gpu"].gpus_per_node == 4
