"""Tests of mooncake_hicache.config: defaults, sources, sizes, validation and env overrides."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
import yaml

from mooncake_hicache.config import (
    CONFIG_ENV_VAR,
    DEFAULT_NVME_PATH,
    Config,
    ConfigError,
    LoggingConfig,
    NvmeConfig,
    TiersConfig,
    format_size,
    load_config,
    parse_size,
)

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

@pytest.fixture
def data_path(tmp_path: Path) -> str:
    """A data file path in a writable directory, so path checks pass."""
    return str(tmp_path / "nvme.data")


def nvme_doc(data_path: str, **settings) -> dict:
    return {"tiers": {"nvme": {"path": data_path, **settings}}}


def expect_error(call, field: str, *fragments: str) -> ConfigError:
    """Run ``call``; assert it raises ConfigError for ``field`` whose message has ``fragments``."""
    with pytest.raises(ConfigError) as info:
        call()
    error = info.value
    message = str(error)
    assert error.field == field, message
    if field:
        assert message.startswith(f"{field}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return error


def first_block_device() -> str | None:
    for path in sorted(glob.glob("/dev/*")):
        try:
            if stat.S_ISBLK(os.stat(path).st_mode) and os.access(path, os.R_OK | os.W_OK):
                return path
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------------------------
# Defaults and sources
# --------------------------------------------------------------------------------------------

def test_defaults_match_the_documented_schema():
    config = load_config(env={})
    nvme = config.tiers.nvme
    assert nvme == NvmeConfig(
        path=DEFAULT_NVME_PATH, capacity=4 * GiB, region_size=64 * MiB, queue_depth=64,
        direct_io=True, io_backend="auto", sync_on_seal=True, reinsertion=True)
    assert config.logging == LoggingConfig(level="INFO")
    assert config == Config()


def test_config_objects_are_frozen():
    config = load_config(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tiers.nvme.capacity = 1  # type: ignore[misc]


def test_to_dict_returns_plain_dicts_with_sizes_as_ints(data_path):
    config = load_config(nvme_doc(data_path, capacity="1GiB", region_size="16MiB"), env={})
    assert config.to_dict() == {
        "mode": "auto",
        "tiers": {"dram": None, "nvme": {
            "path": data_path, "capacity": GiB, "region_size": 16 * MiB, "queue_depth": 64,
            "direct_io": True, "io_backend": "auto", "sync_on_seal": True, "reinsertion": True}},
        "node": {"socket": f"/tmp/mooncake-hicache-{os.geteuid()}/node.sock", "timeout_ms": 5000, "autostart": True,
                 "max_connections": 1024, "socket_mode": 0o600, "allowed_uids": []},
        "metrics": {"port": 9731, "host": "127.0.0.1", "max_connections": 16, "timeout_s": 5},
        "logging": {"level": "INFO"},
        "prefetch": {"policy": "prefix_order", "batch_pages": 16, "concurrency": 1,
                     "cost_model": {"preset": "8b", "prefill_tflops": 494.5, "params_b": None, "layers": None,
                                    "q_dim": None},
                     "estimates": {"dram_gbps": 10.0, "nvme_gbps": 8.0, "smoothing": 0.1, "probe_every": 32,
                                   "probe_pages": 1}},
    }


def test_to_dict_round_trips_through_load_config(data_path):
    config = load_config(nvme_doc(data_path, queue_depth=8, io_backend="threads"), env={})
    assert load_config(config.to_dict(), env={}) == config


def test_yaml_file_round_trip(tmp_path, data_path):
    config = load_config(nvme_doc(data_path, capacity="2GiB", direct_io=False), env={})
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    assert load_config(str(config_file), env={}) == config
    assert load_config(config_file, env={}) == config  # PathLike works too


def test_yaml_file_with_units_and_comments(tmp_path, data_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"""
# a hand-written file
tiers:
  nvme:
    path: {data_path}
    capacity: 1.5 GiB        # with a space
    region_size: 32MiB
    io_backend: io_uring
logging:
  level: debug
""")
    config = load_config(str(config_file), env={})
    assert config.tiers.nvme.capacity == 3 * GiB // 2
    assert config.tiers.nvme.region_size == 32 * MiB
    assert config.tiers.nvme.io_backend == "io_uring"
    assert config.logging.level == "DEBUG"


def test_empty_yaml_file_gives_defaults(tmp_path):
    config_file = tmp_path / "empty.yaml"
    config_file.write_text("# nothing here\n")
    assert load_config(str(config_file), env={}) == Config()


def test_dict_source_with_partial_section_keeps_other_defaults(data_path):
    config = load_config({"tiers": {"nvme": {"path": data_path, "queue_depth": 4}}}, env={})
    assert config.tiers.nvme.queue_depth == 4
    assert config.tiers.nvme.region_size == 64 * MiB
    assert config.logging.level == "INFO"


def test_missing_tiers_section_gives_the_default_nvme_tier():
    assert load_config({"logging": {"level": "WARNING"}}, env={}).tiers.nvme == NvmeConfig()


@pytest.mark.parametrize("tiers", [{"nvme": None}, {}, None], ids=["nvme-null", "empty", "null"])
def test_tiers_without_nvme_leave_the_tier_unconfigured(tiers):
    config = load_config({"tiers": tiers}, env={})
    assert config.tiers == TiersConfig(dram=None, nvme=None)
    assert config.to_dict()["tiers"] == {"dram": None, "nvme": None}


def test_require_tier_rejects_a_config_without_tiers():
    config = load_config({"tiers": {"nvme": None}}, env={})
    expect_error(config.require_tier, "tiers", "no tier configured", "add a tiers.nvme section")


def test_require_tier_returns_the_config_when_a_tier_is_configured():
    config = load_config(env={})
    assert config.require_tier() is config


def test_missing_file_is_reported(tmp_path):
    missing = tmp_path / "nope.yaml"
    expect_error(lambda: load_config(str(missing), env={}), "", "was not found", str(missing))


def test_directory_as_config_file_is_reported(tmp_path):
    expect_error(lambda: load_config(str(tmp_path), env={}), "", "is a directory")


def test_yaml_syntax_error_reports_the_line(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("tiers:\n  nvme:\n    capacity: [1, 2\n    region_size: 64MiB\n")
    error = expect_error(lambda: load_config(str(config_file), env={}), "", "invalid YAML", "line ")
    assert "fix the syntax" in str(error)


def test_yaml_tab_indentation_error_reports_line_three(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("tiers:\n  nvme:\n\tcapacity: 1GiB\n")
    expect_error(lambda: load_config(str(config_file), env={}), "", "line 3")


def test_duplicate_yaml_key_is_rejected_with_both_lines(tmp_path):
    config_file = tmp_path / "dup.yaml"
    config_file.write_text("logging:\n  level: INFO\n  level: DEBUG\n")
    expect_error(lambda: load_config(str(config_file), env={}), "",
                 "duplicate key 'level'", "line 2", "line 3")


def test_yaml_merge_key_values_may_be_overridden_without_a_duplicate_error(tmp_path, data_path):
    config_file = tmp_path / "merge.yaml"
    config_file.write_text(
        "tiers:\n  nvme:\n"
        f"    <<: {{path: {data_path}, queue_depth: 8, io_backend: threads}}\n"
        "    queue_depth: 16\n")
    nvme = load_config(str(config_file), env={}).tiers.nvme
    assert (nvme.path, nvme.queue_depth, nvme.io_backend) == (data_path, 16, "threads")


@pytest.mark.parametrize("document", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, document):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(document)
    expect_error(lambda: load_config(str(config_file), env={}), "",
                 "top level", "must be a mapping", "tiers, node, metrics, logging")


def test_unsupported_source_type_is_rejected():
    expect_error(lambda: load_config(42, env={}), "", "pass a YAML file path, a dict or None")


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (0, 0),
    (4096, 4096),
    (4096.0, 4096),
    ("4096", 4096),
    ("100B", 100),
    ("100 b", 100),
    ("4KiB", 4 * KiB),
    ("512MiB", 512 * MiB),
    ("64GiB", 64 * GiB),
    ("2TiB", 2 * TiB),
    ("1.5GiB", 3 * GiB // 2),
    (".5KiB", 512),
    ("64 GiB", 64 * GiB),
    ("64gib", 64 * GiB),
    ("64GIB", 64 * GiB),
    ("  8 MiB  ", 8 * MiB),
    ("1KB", 1000),
    ("2MB", 2 * 10**6),
    ("64GB", 64 * 10**9),
    ("1tb", 10**12),
    ("1.5GB", 15 * 10**8),
    ("4k", 4 * KiB),
    ("4K", 4 * KiB),
    ("2m", 2 * MiB),
    ("1g", GiB),
    ("1t", TiB),
])
def test_parse_size_accepts(text, expected):
    assert parse_size(text, "tiers.nvme.capacity") == expected


@pytest.mark.parametrize("value, fragment", [
    (-1, "must not be negative"),
    ("-1GiB", "must not be negative"),
    (True, "boolean"),
    (False, "boolean"),
    ("abc", "cannot read 'abc' as a size"),
    ("", "cannot read"),
    ("GiB", "cannot read"),
    ("12XB", "cannot read"),
    ("1.2.3GiB", "cannot read"),
    ("1e9", "cannot read"),
    ("1.5", "not a whole number of bytes"),
    ("0.1KiB", "not a whole number of bytes"),
    (1.5, "expected a size"),
    (None, "expected a size, got null"),
    ([1], "expected a size"),
])
def test_parse_size_rejects(value, fragment):
    expect_error(lambda: parse_size(value, "tiers.nvme.capacity"), "tiers.nvme.capacity",
                 fragment, "e.g. 64GiB")


def test_bad_size_in_a_document_names_the_field(data_path):
    expect_error(lambda: load_config(nvme_doc(data_path, region_size="lots"), env={}),
                 "tiers.nvme.region_size", "cannot read 'lots' as a size", "64GiB")


@pytest.mark.parametrize("n, text", [
    (0, "0 B"),
    (512, "512 B"),
    (4096, "4.0 KiB"),
    (64 * MiB, "64.0 MiB"),
    (3 * GiB // 2, "1.5 GiB"),
    (2 * TiB, "2.0 TiB"),
])
def test_format_size(n, text):
    assert format_size(n) == text


# --------------------------------------------------------------------------------------------
# Unknown keys and wrong types
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("document, field, suggestion", [
    ({"tier": {}}, "tier", "did you mean 'tiers'?"),
    ({"tiers": {"nvm": {}}}, "tiers.nvm", "did you mean 'nvme'?"),
    ({"tiers": {"nvme": {"capcity": "1GiB"}}}, "tiers.nvme.capcity", "did you mean 'capacity'?"),
    ({"tiers": {"nvme": {"queue-depth": 8}}}, "tiers.nvme.queue-depth", "did you mean 'queue_depth'?"),
    ({"logging": {"levl": "INFO"}}, "logging.levl", "did you mean 'level'?"),
])
def test_unknown_key_suggests_the_closest_known_key(document, field, suggestion):
    expect_error(lambda: load_config(document, env={}), field, "unknown field", suggestion)


def test_unknown_key_without_close_match_lists_known_fields():
    expect_error(lambda: load_config({"logging": {"colour": "red"}}, env={}),
                 "logging.colour", "unknown field 'colour'", "known fields here are: level")


@pytest.mark.parametrize("setting, value, field, fragment", [
    ("queue_depth", "abc", "tiers.nvme.queue_depth", "expected an integer, got 'abc'"),
    ("queue_depth", 2.5, "tiers.nvme.queue_depth", "expected an integer"),
    ("queue_depth", True, "tiers.nvme.queue_depth", "expected an integer"),
    ("direct_io", "maybe", "tiers.nvme.direct_io", "expected true or false"),
    ("sync_on_seal", 1, "tiers.nvme.sync_on_seal", "expected true or false"),
    ("reinsertion", None, "tiers.nvme.reinsertion", "expected true or false, got null"),
    ("capacity", [1], "tiers.nvme.capacity", "expected a size"),
    ("path", 5, "tiers.nvme.path", "expected a path string"),
    ("io_backend", "spdk", "tiers.nvme.io_backend", "choose one of: auto, io_uring, threads"),
    ("io_backend", 1, "tiers.nvme.io_backend", "choose one of"),
])
def test_wrong_type_names_the_field(data_path, setting, value, field, fragment):
    expect_error(lambda: load_config(nvme_doc(data_path, **{setting: value}), env={}), field, fragment)


def test_quoted_numbers_and_booleans_are_accepted(data_path):
    config = load_config(nvme_doc(data_path, queue_depth="32", direct_io="false", reinsertion="yes"),
                         env={})
    assert (config.tiers.nvme.queue_depth, config.tiers.nvme.direct_io,
            config.tiers.nvme.reinsertion) == (32, False, True)


@pytest.mark.parametrize("document, field", [
    ({"tiers": 5}, "tiers"),
    ({"tiers": {"nvme": "fast"}}, "tiers.nvme"),
    ({"logging": ["INFO"]}, "logging"),
])
def test_section_must_be_a_mapping(document, field):
    expect_error(lambda: load_config(document, env={}), field, f"section {field} must be a mapping")


def test_io_backend_and_level_are_case_insensitive(data_path):
    config = load_config({**nvme_doc(data_path, io_backend="IO_URING"), "logging": {"level": "warning"}},
                         env={})
    assert config.tiers.nvme.io_backend == "io_uring"
    assert config.logging.level == "WARNING"


@pytest.mark.parametrize("level", ["VERBOSE", "WARN", "", 10])
def test_invalid_log_level_lists_the_choices(level):
    expect_error(lambda: load_config({"logging": {"level": level}}, env={}),
                 "logging.level", "choose one of: DEBUG, INFO, WARNING, ERROR")


# --------------------------------------------------------------------------------------------
# Range and cross-field rules
# --------------------------------------------------------------------------------------------

def test_region_size_must_be_a_multiple_of_4096(data_path):
    expect_error(lambda: load_config(nvme_doc(data_path, region_size=MiB + 512), env={}),
                 "tiers.nvme.region_size", "not a multiple of 4096", "such as 64MiB")


def test_region_size_below_one_mebibyte_is_rejected(data_path):
    expect_error(lambda: load_config(nvme_doc(data_path, region_size="512KiB"), env={}),
                 "tiers.nvme.region_size", "512.0 KiB is below the minimum of 1.0 MiB", "raise it")


def test_region_size_above_four_gibibytes_is_rejected(data_path):
    expect_error(lambda: load_config(nvme_doc(data_path, region_size="8GiB", capacity="64GiB"), env={}),
                 "tiers.nvme.region_size", "8.0 GiB is above the maximum of 4.0 GiB", "lower it")


def test_region_size_limits_are_inclusive(data_path):
    assert load_config(nvme_doc(data_path, region_size="1MiB"), env={}).tiers.nvme.region_size == MiB
    config = load_config(nvme_doc(data_path, region_size="4GiB", capacity="8GiB"), env={})
    assert config.tiers.nvme.region_size == 4 * GiB


def test_capacity_below_two_regions_is_rejected(data_path):
    expect_error(lambda: load_config(nvme_doc(data_path, capacity="64MiB", region_size="64MiB"), env={}),
                 "tiers.nvme.capacity",
                 "capacity 64.0 MiB is smaller than two regions of 64.0 MiB",
                 "raise tiers.nvme.capacity or lower tiers.nvme.region_size")


def test_capacity_of_exactly_two_regions_is_accepted(data_path):
    config = load_config(nvme_doc(data_path, capacity="128MiB", region_size="64MiB"), env={})
    assert config.tiers.nvme.capacity == 128 * MiB


def test_capacity_zero_is_rejected_for_a_file(data_path):
    expect_error(lambda: load_config(nvme_doc(data_path, capacity=0), env={}),
                 "tiers.nvme.capacity", "allowed only when tiers.nvme.path is a block device",
                 "set a size such as 4GiB")


@pytest.mark.parametrize("depth", [0, -1, 1025])
def test_queue_depth_out_of_range_is_rejected(data_path, depth):
    expect_error(lambda: load_config(nvme_doc(data_path, queue_depth=depth), env={}),
                 "tiers.nvme.queue_depth", f"queue depth {depth} is out of range",
                 "choose a value from 1 to 1024")


@pytest.mark.parametrize("depth", [1, 1024])
def test_queue_depth_limits_are_inclusive(data_path, depth):
    assert load_config(nvme_doc(data_path, queue_depth=depth), env={}).tiers.nvme.queue_depth == depth


# --------------------------------------------------------------------------------------------
# The data path
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", "   ", None])
def test_empty_path_is_rejected(path):
    expect_error(lambda: load_config({"tiers": {"nvme": {"path": path}}}, env={}),
                 "tiers.nvme.path", "must not be empty", DEFAULT_NVME_PATH)


def test_path_that_is_a_directory_is_rejected(tmp_path):
    error = expect_error(lambda: load_config(nvme_doc(str(tmp_path)), env={}),
                         "tiers.nvme.path", "is a directory", "give a file path inside it")
    assert os.path.join(str(tmp_path), "nvme.data") in str(error)


def test_path_under_a_regular_file_is_rejected(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    expect_error(lambda: load_config(nvme_doc(str(afile / "sub" / "nvme.data")), env={}),
                 "tiers.nvme.path", f"'{afile}' is not a directory", "choose a path under a directory")


@pytest.mark.skipif(os.access("/proc/self", os.W_OK), reason="/proc/self is writable here")
def test_path_in_an_unwritable_directory_is_rejected():
    expect_error(lambda: load_config(nvme_doc("/proc/self/mooncake/nvme.data"), env={}),
                 "tiers.nvme.path", "directory '/proc/self' is not writable",
                 "choose a path on a writable file system")


def _raise(field: str, reason: str):
    raise ConfigError(field, reason)


def config_error_as_unprivileged_user(make_path) -> tuple[str, str, str]:
    """``load_config`` of an NVMe path that ``make_path(workdir)`` prepares, as an unprivileged
    user: this process when it is not root, else a forked child that drops to ``nobody`` (uid
    65534 when the system has no such user) in a fresh directory that user owns. Returns (path,
    the ConfigError's field, its reason); skips only when not root and the permissions do not
    bind this user."""
    workdir = tempfile.mkdtemp(prefix="mch-perm-", dir="/tmp" if os.geteuid() == 0 else None)  # /tmp: nobody may enter
    try:
        if os.geteuid() != 0:
            path = make_path(workdir)
            if os.access(path if os.path.exists(path) else os.path.dirname(path), os.W_OK):
                pytest.skip("not root, and this user may write there anyway (a capability?)")
            return (path, *_load_config_error(path))
        try:
            user = pwd.getpwnam("nobody")
            uid, gid = user.pw_uid, user.pw_gid
        except KeyError:
            uid = gid = 65534
        os.chown(workdir, uid, gid)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop root for good, answer through the pipe, never return to pytest
            status = 1
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                path = make_path(workdir)
                answer = [path, *_load_config_error(path)]
                os.write(write_end, json.dumps(answer).encode())
                status = 0
            except BaseException as e:  # noqa: BLE001 - reported by the parent
                os.write(write_end, json.dumps(["<child failed>", repr(e)]).encode())
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            answer = json.loads(f.read() or b'["<child failed>", "it died without an answer"]')
        os.waitpid(pid, 0)
        assert answer[0] != "<child failed>", answer[1]
        return tuple(answer)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _load_config_error(path: str) -> tuple[str, str]:
    try:
        load_config(nvme_doc(path), env={})
    except ConfigError as e:
        return e.field, e.reason
    return "<no error>", f"load_config accepted {path}"


def test_path_in_a_read_only_directory_is_rejected():
    def locked_dir(workdir):
        locked = os.path.join(workdir, "locked")
        os.mkdir(locked, 0o500)
        return os.path.join(locked, "nvme.data")

    path, field, reason = config_error_as_unprivileged_user(locked_dir)
    expect_error(lambda: _raise(field, reason), "tiers.nvme.path",
                 f"directory '{os.path.dirname(path)}' is not writable")


def test_existing_read_only_data_file_is_rejected():
    def read_only_file(workdir):
        path = os.path.join(workdir, "nvme.data")
        Path(path).write_bytes(b"")
        os.chmod(path, 0o400)
        return path

    _, field, reason = config_error_as_unprivileged_user(read_only_file)
    expect_error(lambda: _raise(field, reason), "tiers.nvme.path", "is not readable and writable",
                 "fix its permissions")


def test_missing_parent_directories_are_accepted_and_not_created(tmp_path):
    path = tmp_path / "a" / "b" / "nvme.data"
    assert load_config(nvme_doc(str(path)), env={}).tiers.nvme.path == str(path)
    assert not (tmp_path / "a").exists()


def test_existing_data_file_is_accepted(data_path):
    Path(data_path).write_bytes(b"")
    assert load_config(nvme_doc(data_path), env={}).tiers.nvme.path == data_path


def test_character_device_is_rejected():
    expect_error(lambda: load_config(nvme_doc(os.devnull), env={}),
                 "tiers.nvme.path", "neither a regular file nor a block device")


def test_path_expands_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(nvme_doc("~/nvme.data"), env={})
    assert config.tiers.nvme.path == str(tmp_path / "nvme.data")


def test_path_accepts_a_pathlike_in_a_dict(tmp_path):
    config = load_config(nvme_doc(tmp_path / "nvme.data"), env={})  # type: ignore[arg-type]
    assert config.tiers.nvme.path == str(tmp_path / "nvme.data")


@pytest.mark.skipif(first_block_device() is None, reason="no accessible block device")
def test_capacity_zero_means_whole_device_for_a_block_device():
    device = first_block_device()
    config = load_config(nvme_doc(device, capacity=0), env={})  # validation only stats the device
    assert (config.tiers.nvme.path, config.tiers.nvme.capacity) == (device, 0)


# --------------------------------------------------------------------------------------------
# Environment overrides
# --------------------------------------------------------------------------------------------

def test_env_override_of_a_size_and_a_level():
    config = load_config(env={"MOONCAKE_HICACHE_TIERS__NVME__CAPACITY": "8GiB",
                              "MOONCAKE_HICACHE_LOGGING__LEVEL": "DEBUG"})
    assert config.tiers.nvme.capacity == 8 * GiB
    assert config.logging.level == "DEBUG"
    assert config.tiers.nvme.region_size == 64 * MiB  # other defaults kept


def test_env_override_values_are_typed_as_yaml(data_path):
    config = load_config(nvme_doc(data_path), env={
        "MOONCAKE_HICACHE_TIERS__NVME__QUEUE_DEPTH": "16",
        "MOONCAKE_HICACHE_TIERS__NVME__DIRECT_IO": "false",
        "MOONCAKE_HICACHE_TIERS__NVME__CAPACITY": "1073741824",
    })
    assert config.tiers.nvme.queue_depth == 16
    assert config.tiers.nvme.direct_io is False
    assert config.tiers.nvme.capacity == GiB


def test_env_override_names_are_case_insensitive(data_path):
    config = load_config(nvme_doc(data_path), env={"mooncake_hicache_Tiers__Nvme__Io_Backend": "threads"})
    assert config.tiers.nvme.io_backend == "threads"


def test_env_override_wins_over_the_file_and_keeps_its_other_settings(tmp_path, data_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(nvme_doc(data_path, capacity="2GiB", queue_depth=8)))
    config = load_config(str(config_file), env={"MOONCAKE_HICACHE_TIERS__NVME__CAPACITY": "3GiB"})
    assert (config.tiers.nvme.capacity, config.tiers.nvme.queue_depth,
            config.tiers.nvme.path) == (3 * GiB, 8, data_path)


def test_env_override_does_not_modify_a_dict_source(data_path):
    source = nvme_doc(data_path)
    before = yaml.safe_dump(source)
    load_config(source, env={"MOONCAKE_HICACHE_TIERS__NVME__QUEUE_DEPTH": "2"})
    assert yaml.safe_dump(source) == before


@pytest.mark.parametrize("tiers", [{"nvme": None}, {}])
def test_env_override_enables_an_unconfigured_tier(tiers):
    config = load_config({"tiers": tiers}, env={"MOONCAKE_HICACHE_TIERS__NVME__CAPACITY": "1GiB"})
    assert config.tiers.nvme == NvmeConfig(capacity=GiB)


def test_env_override_can_disable_a_tier():
    config = load_config(env={"MOONCAKE_HICACHE_TIERS__NVME": "null"})
    assert config.tiers.nvme is None


def test_env_override_of_an_unknown_field_names_the_variable():
    variable = "MOONCAKE_HICACHE_TIERS__NVME__CAPCITY"
    expect_error(lambda: load_config(env={variable: "1GiB"}), variable,
                 f"environment variable {variable}", "unknown field 'capcity'",
                 "did you mean 'capacity'?")


def test_env_override_of_an_unknown_section_names_the_variable():
    variable = "MOONCAKE_HICACHE_TEIRS__NVME__CAPACITY"
    expect_error(lambda: load_config(env={variable: "1GiB"}), variable, "did you mean 'tiers'?")


def test_env_override_below_a_setting_is_rejected():
    variable = "MOONCAKE_HICACHE_LOGGING__LEVEL__NAME"
    expect_error(lambda: load_config(env={variable: "x"}), variable,
                 "logging.level is a setting, not a section")


def test_env_override_with_an_empty_level_is_rejected():
    variable = "MOONCAKE_HICACHE_LOGGING____LEVEL"
    expect_error(lambda: load_config(env={variable: "INFO"}), variable, "empty level")


def test_env_override_with_single_underscores_suggests_double_underscores():
    variable = "MOONCAKE_HICACHE_TIERS_NVME_CAPACITY"
    expect_error(lambda: load_config(env={variable: "1GiB"}), variable, "double underscores")


def test_unrelated_variables_with_the_prefix_are_ignored():
    assert load_config(env={"MOONCAKE_HICACHE_BUILD_DIR": "/tmp/x", "PATH": "/bin"}) == Config()


def test_invalid_env_value_error_names_field_and_variable():
    variable = "MOONCAKE_HICACHE_TIERS__NVME__QUEUE_DEPTH"
    expect_error(lambda: load_config(env={variable: "abc"}), "tiers.nvme.queue_depth",
                 "expected an integer", f"set by environment variable {variable}")


def test_cross_field_error_from_env_names_the_variable():
    variable = "MOONCAKE_HICACHE_TIERS__NVME__CAPACITY"
    expect_error(lambda: load_config(env={variable: "64MiB"}), "tiers.nvme.capacity",
                 "smaller than two regions", f"set by environment variable {variable}")


def test_config_env_var_names_the_file_when_no_source_is_given(tmp_path, data_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(nvme_doc(data_path, queue_depth=3)))
    config = load_config(env={CONFIG_ENV_VAR: str(config_file),
                              "MOONCAKE_HICACHE_LOGGING__LEVEL": "ERROR"})
    assert config.tiers.nvme.queue_depth == 3
    assert config.logging.level == "ERROR"


def test_config_env_var_is_ignored_when_a_source_is_given(tmp_path, data_path):
    config = load_config(nvme_doc(data_path), env={CONFIG_ENV_VAR: str(tmp_path / "missing.yaml")})
    assert config.tiers.nvme.path == data_path


def test_missing_file_named_by_config_env_var_mentions_the_variable(tmp_path):
    missing = tmp_path / "missing.yaml"
    expect_error(lambda: load_config(env={CONFIG_ENV_VAR: str(missing)}), "",
                 "was not found", CONFIG_ENV_VAR, str(missing))


def test_env_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("MOONCAKE_HICACHE_LOGGING__LEVEL", "WARNING")
    assert load_config().logging.level == "WARNING"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def test_config_error_is_a_value_error_with_the_field():
    error = expect_error(lambda: load_config({"logging": {"level": "LOUD"}}, env={}), "logging.level")
    assert isinstance(error, ValueError)
    assert error.reason in str(error)


# --------------------------------------------------------------------------------------------
# DRAM tier, node, metrics, mode
# --------------------------------------------------------------------------------------------

def test_defaults_give_dram_and_nvme_tiers_served_by_a_node():
    config = load_config(env={})
    assert config.tiers.dram is not None and config.tiers.nvme is not None
    assert config.resolved_mode == "node"


def test_nvme_only_config_runs_in_process_in_auto_mode(data_path):
    assert load_config(nvme_doc(data_path), env={}).resolved_mode == "in_process"


def test_node_mode_without_dram_is_refused_with_the_fix(data_path):
    doc = nvme_doc(data_path)
    doc["mode"] = "node"
    expect_error(lambda: load_config(doc, env={}), "mode", "needs a tiers.dram section", "mode: in_process")


@pytest.mark.parametrize("field, value, fragment", [
    ("eviction", "fifo", "lru, s3fifo, prefix_lru"),
    ("admission", "sometimes", "always, never, second_hit"),
    ("slab_size", "1000", "multiple of 4096"),
    ("capacity", "1MiB", "smaller than one slab"),
])
def test_bad_dram_settings_name_the_field(field, value, fragment):
    doc = {"tiers": {"dram": {field: value}}}
    expect_error(lambda: load_config(doc, env={}), f"tiers.dram.{field}", fragment)


def test_socket_path_longer_than_a_unix_socket_allows_is_refused():
    doc = {"node": {"socket": "/tmp/" + "s" * 120}}
    expect_error(lambda: load_config(doc, env={}), "node.socket", "107 bytes")


def test_env_override_sets_the_dram_eviction_policy():
    config = load_config(env={"MOONCAKE_HICACHE_TIERS__DRAM__EVICTION": "s3fifo"})
    assert config.tiers.dram.eviction == "s3fifo"


# --------------------------------------------------------------------------------------------
# Settings that would lose data or be truncated (issue 14, item 2)
# --------------------------------------------------------------------------------------------

def test_a_slab_larger_than_what_an_nvme_region_holds_is_refused_with_the_fix(data_path):
    doc = {"tiers": {"dram": {"capacity": "256MiB", "slab_size": "64MiB"},
                     "nvme": {"path": data_path, "region_size": "64MiB"}}}
    expect_error(lambda: load_config(doc, env={}), "tiers.dram.slab_size", "64.0 MiB",
                 "tiers.nvme.region_size", "lower tiers.dram.slab_size")
    doc["tiers"]["dram"]["slab_size"] = "32MiB"
    assert load_config(doc, env={}).tiers.dram.slab_size == 32 * MiB


def test_the_largest_slab_an_nvme_region_holds_is_accepted(data_path):
    from mooncake_hicache import _native
    largest = 64 * MiB - _native.NVME_REGION_OVERHEAD
    doc = {"tiers": {"dram": {"capacity": "256MiB", "slab_size": largest},
                     "nvme": {"path": data_path, "region_size": "64MiB"}}}
    assert load_config(doc, env={}).tiers.dram.slab_size == largest
    doc["tiers"]["dram"]["slab_size"] = largest + 4096
    expect_error(lambda: load_config(doc, env={}), "tiers.dram.slab_size")


def test_slab_size_has_an_upper_bound():
    doc = {"tiers": {"dram": {"capacity": "8GiB", "slab_size": "3GiB"}, "nvme": None}}
    expect_error(lambda: load_config(doc, env={}), "tiers.dram.slab_size", "maximum of 2.0 GiB")


@pytest.mark.parametrize("host", ["~", "~/metrics", "$HOME", "127.0.0.1:9731", "http://127.0.0.1", "a b"])
def test_metrics_host_is_a_host_not_a_path(host):
    expect_error(lambda: load_config({"metrics": {"host": host}}, env={}), "metrics.host", "host name or an IP address")


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1", "::", "localhost", "metrics-1.example.com"])
def test_metrics_host_takes_addresses_and_names_as_written(host):
    assert load_config({"metrics": {"host": host}}, env={}).metrics.host == host


def test_the_native_engines_refuse_sizes_that_would_be_truncated(tmp_path):
    from mooncake_hicache import _native
    path = str(tmp_path / "big.data")
    with pytest.raises(_native.EngineError, match=r"region_size.*maximum"):
        _native.NvmeEngine(path, capacity=16 * GiB, region_size=8 * GiB)
    assert not os.path.exists(path) or os.path.getsize(path) == 0  # refused before sizing the file
    with pytest.raises(_native.EngineError, match=r"slab_size.*maximum"):
        _native.TieredStore(dram_capacity=2 * MiB, slab_size=8 * GiB)


def test_the_native_tiered_store_refuses_a_slab_an_nvme_region_cannot_hold(tmp_path):
    from mooncake_hicache import _native
    with pytest.raises(_native.EngineError, match=r"tiers\.dram\.slab_size.*tiers\.nvme\.region_size"):
        _native.TieredStore(dram_capacity=4 * MiB, slab_size=2 * MiB, hugepages=False,
                            nvme_path=str(tmp_path / "n.data"), nvme_capacity=8 * MiB, nvme_region_size=2 * MiB)
