"""The ``cluster:`` section of the configuration: defaults, the shipped configs/cluster.yaml,
every rule with the field it names, environment overrides, and the secret never shown."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from mooncake_hicache.config import ClusterConfig, ClusterMember, ConfigError, EtcdConfig, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_YAML = os.path.join(ROOT, "configs", "cluster.yaml")
SECRET = "s3cr3t-Value-that-must-not-leak"
GiB = 1 << 30


@pytest.fixture
def secret_file(tmp_path) -> str:
    path = tmp_path / "cluster.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return str(path)


def doc(secret_file: str, **cluster) -> dict:
    """A valid static two-node document (this node: a), with ``cluster`` settings replaced."""
    base = {"node_id": "a", "listen_port": 7700, "secret_file": secret_file,
            "members": [{"id": "a", "host": "127.0.0.1", "port": 7700}, {"id": "b", "host": "10.0.0.2", "port": 7700}]}
    base.update(cluster)
    return {"tiers": {"dram": {"capacity": "1GiB"}}, "cluster": {k: v for k, v in base.items() if v is not None}}


def expect_error(document: dict, field: str, *fragments: str, env=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(document, env=env or {})
    message = str(info.value)
    assert info.value.field == field, message
    for fragment in fragments:
        assert fragment in message, message
    assert SECRET not in message
    return message


# ---- defaults and the shipped file -------------------------------------------------------------

def test_no_cluster_section_means_a_single_host_as_before():
    config = load_config({"tiers": {"dram": {}}}, env={})
    assert config.cluster is None
    assert "cluster" not in config.to_dict()


def test_a_static_cluster_loads_with_its_defaults(secret_file):
    cluster = load_config(doc(secret_file), env={}).cluster
    assert cluster == ClusterConfig(
        node_id="a", listen_host="127.0.0.1", listen_port=7700, advertise_host=None, capacity=None,
        members=(ClusterMember("a", "127.0.0.1", 7700), ClusterMember("b", "10.0.0.2", 7700)), etcd=None,
        replicas=1, write_quorum=0, transport="tcp", connect_timeout_ms=1000, request_timeout_ms=5000,
        grace_window_ms=30000, spill_depth=1, secret=None, secret_file=secret_file)
    assert cluster.read_secret() == SECRET.encode()
    assert [m.placement_weight for m in cluster.members] == [1.0, 1.0]


def test_the_shipped_cluster_yaml_is_valid_and_comments_its_fields(secret_file):
    # The example's 64 GiB DRAM tier is checked against this machine's memory: give it a share that fits.
    config = load_config(CLUSTER_YAML, env={"MOONCAKE_HICACHE_CLUSTER__SECRET_FILE": secret_file,
                                            "MOONCAKE_HICACHE_TIERS__DRAM__CAPACITY": "1GiB"})
    cluster = config.cluster
    assert cluster.self_id == "node-a" and cluster.listen_port == 7700 and cluster.write_quorum == 0
    assert [m.placement_weight for m in cluster.members] == [64.0 * GiB, 64.0 * GiB, 32.0 * GiB]
    text = open(CLUSTER_YAML).read()
    for field in ("endpoints:", "prefix:", "lease_ttl_s:"):  # the etcd way is documented too
        assert f"#   {field}" in text


def test_check_config_never_prints_the_secret(tmp_path, secret_file):
    inline = tmp_path / "inline.yaml"
    inline.write_text(yaml.safe_dump(doc(None, secret=SECRET)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONCAKE_HICACHE_")}
    for path, extra in ((inline, {}), (CLUSTER_YAML, {"MOONCAKE_HICACHE_CLUSTER__SECRET_FILE": secret_file,
                                                      "MOONCAKE_HICACHE_TIERS__DRAM__CAPACITY": "1GiB"})):
        r = subprocess.run([sys.executable, "-m", "mooncake_hicache", "check-config", str(path)],
                           capture_output=True, text=True, timeout=60, env={**env, **extra})
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr
    printed = yaml.safe_load(r.stdout)
    assert printed["cluster"]["secret_file"] == secret_file and printed["cluster"]["secret"] is None


def test_an_inline_secret_is_redacted_in_repr_and_to_dict(secret_file):
    config = load_config(doc(None, secret=SECRET), env={})
    assert SECRET not in repr(config) and SECRET not in str(config.cluster)
    assert config.to_dict()["cluster"]["secret"] == "<redacted>"
    expect_error(config.to_dict(), "cluster.secret", "placeholder", "secret_file")
    assert load_config(config.to_dict(redact_secrets=False), env={}) == config


def test_to_dict_round_trips_through_yaml(secret_file):
    config = load_config(doc(secret_file, members=[
        {"id": "a", "host": "127.0.0.1", "port": 7700, "capacity": "2GiB"},
        {"id": "b", "host": "::1", "port": 7701, "capacity": "1GiB"}], replicas=2, write_quorum=1), env={})
    assert load_config(yaml.safe_load(yaml.safe_dump(config.to_dict())), env={}) == config


def test_an_etcd_cluster_loads(secret_file):
    cluster = load_config(doc(secret_file, members=None, etcd={"endpoints": "http://10.0.0.9:2379, https://e2:2379",
                                                               "prefix": "/pool-a"}), env={}).cluster
    assert cluster.etcd == EtcdConfig(endpoints=("http://10.0.0.9:2379", "https://e2:2379"), prefix="/pool-a/",
                                      lease_ttl_s=5)
    assert cluster.members == ()


def test_env_overrides_reach_the_cluster_section(secret_file):
    env = {"MOONCAKE_HICACHE_CLUSTER__REPLICAS": "2", "MOONCAKE_HICACHE_CLUSTER__WRITE_QUORUM": "all",
           "MOONCAKE_HICACHE_CLUSTER__GRACE_WINDOW_MS": "0"}
    cluster = load_config(doc(secret_file), env=env).cluster
    assert (cluster.replicas, cluster.write_quorum, cluster.grace_window_ms) == (2, 0, 0)


def test_env_alone_can_configure_an_etcd_cluster():
    env = {"MOONCAKE_HICACHE_CLUSTER__ETCD__ENDPOINTS": "http://127.0.0.1:2379",
           "MOONCAKE_HICACHE_CLUSTER__NODE_ID": "n1", "MOONCAKE_HICACHE_CLUSTER__SECRET": SECRET}
    config = load_config({"tiers": {"dram": {}}}, env=env)
    assert config.cluster.etcd.endpoints == ("http://127.0.0.1:2379",) and config.cluster.self_id == "n1"
    assert config.cluster.read_secret() == SECRET.encode()


def test_an_error_from_an_env_value_names_the_variable_and_not_the_secret():
    env = {"MOONCAKE_HICACHE_CLUSTER__ETCD__ENDPOINTS": "http://127.0.0.1:2379",
           "MOONCAKE_HICACHE_CLUSTER__SECRET": SECRET[:8]}
    message = expect_error({"tiers": {"dram": {}}}, "cluster.secret", "fewer than 16", env=env)
    assert "MOONCAKE_HICACHE_CLUSTER__SECRET" in message


# ---- rules ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings,field,fragment", [
    ({"etcd": {}}, "cluster.members", "both"),
    ({"members": None}, "cluster.members", "neither"),
    ({"members": [{"id": "a", "host": "h", "port": 7700}, {"id": "a", "host": "g", "port": 1}]},
     "cluster.members[1].id", "listed twice"),
    ({"members": [{"id": "a", "host": "h", "port": 7700, "capacity": "1GiB"}, {"id": "b", "host": "g", "port": 1}]},
     "cluster.members[1]", "no capacity"),
    ({"members": [{"id": "a", "host": "h", "port": 7700, "weight": 1, "capacity": "1GiB"}]}, "cluster.members[0]",
     "not both"),
    ({"members": [{"id": "a", "host": "h"}]}, "cluster.members[0].port", "needs 'port'"),
    ({"members": [{"id": "a", "host": "h", "port": 7700, "wieght": 2}]}, "cluster.members[0].wieght", "weight"),
    ({"members": [{"id": "a", "host": "h", "port": 70000}]}, "cluster.members[0].port", "out of range"),
    ({"members": [{"id": "a", "host": "h", "port": 7700, "weight": 0}]}, "cluster.members[0].weight", "positive"),
    ({"members": [{"id": "a", "host": "http://h", "port": 7700}]}, "cluster.members[0].host", "no scheme"),
    ({"members": "a,b"}, "cluster.members", "list"),
    ({"node_id": "c"}, "cluster.members", "not in cluster.members"),
    ({"listen_port": 7701}, "cluster.listen_port", "make them the same"),
    ({"listen_port": 70000}, "cluster.listen_port", "out of range"),
    ({"node_id": "bad id"}, "cluster.node_id", "letters, digits"),
    ({"replicas": 3}, "cluster.replicas", "more than the 2 members"),
    ({"replicas": 0}, "cluster.replicas", "out of range"),
    ({"replicas": 2, "write_quorum": 3}, "cluster.write_quorum", "more than replicas"),
    ({"write_quorum": -1}, "cluster.write_quorum", "negative"),
    ({"transport": "udp"}, "cluster.transport", "choose one of: tcp, rdma, auto"),
    ({"rdma": {"devices": "mlx5_0,mlx5_0"}}, "cluster.rdma.devices[1]", "listed twice"),
    ({"rdma": {"devices": ["mlx5/0"]}}, "cluster.rdma.devices[0]", "invalid device name"),
    ({"rdma": {"gid_index": -2}}, "cluster.rdma.gid_index", "out of range"),
    ({"rdma": {"lanes": 2}}, "cluster.rdma.lanes", "unknown field"),
    ({"request_timeout_ms": 0}, "cluster.request_timeout_ms", "out of range"),
    ({"grace_window_ms": -5}, "cluster.grace_window_ms", "out of range"),
    ({"spill_depth": 9}, "cluster.spill_depth", "out of range"),
    ({"capacity": "1GiB"}, "cluster.capacity", "static members"),
    ({"unknown": 1}, "cluster.unknown", "known fields"),
])
def test_a_bad_cluster_setting_names_its_field(secret_file, settings, field, fragment):
    expect_error(doc(secret_file, **settings), field, fragment)


@pytest.mark.parametrize("etcd,field,fragment", [
    ({"lease_ttl_s": 1}, "cluster.etcd.lease_ttl_s", "2 to 300"),
    ({"endpoints": "10.0.0.9:2379"}, "cluster.etcd.endpoints[0]", "http://HOST:PORT"),
    ({"endpoints": ["http://h"]}, "cluster.etcd.endpoints[0]", "http://HOST:PORT"),
    ({"endpoints": []}, "cluster.etcd.endpoints", "one or more"),
    ({"prefix": "pool"}, "cluster.etcd.prefix", "starts with '/'"),
])
def test_a_bad_etcd_setting_names_its_field(secret_file, etcd, field, fragment):
    expect_error(doc(secret_file, members=None, etcd=etcd), field, fragment)


def test_a_wildcard_listener_needs_an_advertised_address(secret_file):
    document = doc(secret_file, members=None, etcd={}, listen_host="0.0.0.0")
    expect_error(document, "cluster.advertise_host", "wildcard")
    document["cluster"]["advertise_host"] = "10.0.0.1"
    assert load_config(document, env={}).cluster.advertised_host == "10.0.0.1"


def test_a_cluster_needs_the_node(secret_file):
    document = doc(secret_file)
    document["tiers"] = {"nvme": {"path": secret_file + ".data", "capacity": "1GiB", "region_size": "1MiB"}}
    expect_error(document, "cluster", "tiers.dram")


def test_the_secret_rules(tmp_path, secret_file):
    expect_error(doc(None), "cluster.secret_file", "needs a shared secret", "head -c 32 /dev/urandom")
    expect_error(doc(secret_file, secret=SECRET), "cluster.secret", "both")
    expect_error(doc(None, secret="short"), "cluster.secret", "fewer than 16")
    expect_error(doc(None, secret=12345678901234567890), "cluster.secret", "must be a string")
    expect_error(doc(str(tmp_path / "missing")), "cluster.secret_file", "cannot read", "No such file")
    os.chmod(secret_file, 0o644)
    expect_error(doc(secret_file), "cluster.secret_file", "chmod 600")
