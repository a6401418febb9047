"""docker/compose.yaml, without Docker: valid by the Compose Specification schema, and wired the way
the services' own settings and the project's rules need.

The schema is vendored (no network at test time): docker/compose-spec.schema.json is
``schema/compose-spec.json`` of the Go module github.com/compose-spec/compose-go/v2 v2.16.2 — the
copy `docker compose` itself embeds and validates with (see docker/README.md).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from importlib.metadata import version

import jsonschema
import pytest

from feature_service.config import FeatureServiceSettings
from features import contract as sig
from gateway.config import GatewaySettings
from tests.unit.docker._support import (
    DOCKER,
    REPO,
    interpolate,
    load_compose,
    load_schema,
    variables,
)

ONE_SHOT = {"kafka-init"}
ADMIN_TOKEN = "RECSYS_GATEWAY_ADMIN_TOKEN"


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """Interpolated with an empty environment: the defaults of the file, as `up` would use them."""
    return interpolate(raw, {})


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def test_the_vendored_schema_is_the_compose_specification(validator):
    schema = validator.schema
    assert schema["title"] == "Compose Specification"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert isinstance(validator, jsonschema.Draft202012Validator)


def test_the_compose_file_is_valid_before_and_after_interpolation(validator, raw, compose):
    assert _errors(validator, raw) == []
    assert _errors(validator, compose) == []
    assert _errors(validator, interpolate(raw, {ADMIN_TOKEN: "t", "RECSYS_TRITON_GPUS": "all"})) == []


def test_the_schema_check_catches_mistakes(validator, compose):
    """The validation is not vacuous: a misspelt key or a wrong type fails."""
    broken = {**compose, "services": {**compose["services"]}}
    broken["services"]["triton"] = {**compose["services"]["triton"], "gpu": True}
    assert _errors(validator, broken)
    broken["services"]["triton"] = {**compose["services"]["triton"], "healthcheck": {"test": 1}}
    assert _errors(validator, broken)


def test_every_variable_has_a_default_except_the_admin_token(raw):
    """`docker compose up` works with no .env at all, and no secret has a default."""
    for name, op, arg in variables(raw):
        assert op in (":-", "-") and arg, f"${{{name}}} needs a default"
        assert "TOKEN" not in name and "PASSWORD" not in name
    assert raw["services"]["gateway"]["environment"][ADMIN_TOKEN] is None  # passed through


def test_every_long_running_service_has_a_healthcheck_and_dependencies_wait_for_it(compose):
    services = compose["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no" and "healthcheck" not in service
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert service.get("restart") == "unless-stopped", name
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency]
            else:
                assert how["condition"] == "service_completed_successfully"
                assert dependency in ONE_SHOT


def test_dependencies_start_in_order(compose):
    services = compose["services"]

    def waits_for(name):
        return {d: c["condition"] for d, c in services[name].get("depends_on", {}).items()}

    healthy, done = "service_healthy", "service_completed_successfully"
    assert waits_for("gateway") == {"triton": healthy, "kafka": healthy, "redis": healthy,
                                    "kafka-init": done}
    assert waits_for("feature_service") == {"kafka": healthy, "redis": healthy, "kafka-init": done}
    assert waits_for("kafka-init") == {"kafka": healthy}


def test_triton_runs_on_a_gpu_with_explicit_model_control(compose):
    triton = compose["services"]["triton"]
    command = triton["command"]
    assert command[0] == "tritonserver"
    assert "--model-control-mode=explicit" in command
    assert "--load-model=*" in command
    repository = next(a.split("=", 1)[1] for a in command if a.startswith("--model-repository="))
    mount = next(v for v in triton["volumes"] if v["target"] == repository)
    assert mount["type"] == "bind" and mount["read_only"] is True
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"]
               and (d.get("count") == "all" or int(d.get("count", 1)) >= 1) for d in devices)
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    # Host ports on loopback only: the model-control API has no authentication.
    assert all(str(p).startswith("127.0.0.1:") for p in triton.get("ports", []))


def test_the_triton_image_matches_the_pinned_client():
    """NGC container YY.MM ships Triton 2.(41 + 12·(YY-24) + MM): 24.10 is 2.51, the version of the
    pinned tritonclient (whose protocol and model_config the repository is written with)."""
    image = interpolate(load_compose()["services"]["triton"]["image"], {})
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d)\.(\d\d)-py3", image)
    assert match, image
    year, month = int(match.group(1)), int(match.group(2))
    client_minor = int(version("tritonclient").split(".")[1])
    assert 41 + 12 * (year - 24) + month == client_minor


def test_kafka_is_a_single_kraft_node_of_the_projects_version(compose):
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert any(v.endswith(":" + env["KAFKA_LOG_DIRS"]) for v in kafka["volumes"])
    pom = ET.parse(REPO / "stack" / "kafka_files" / "pom.xml")
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    kafka_version = pom.find("m:properties/m:kafka.version", ns).text
    for name in ("kafka", "kafka-init"):
        assert compose["services"][name]["image"] == f"apache/kafka:{kafka_version}"


def test_redis_persists_every_acknowledged_write(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "always"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_redis_memory_is_bounded_and_evicts_only_expiring_keys(compose):
    command = compose["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--maxmemory"]
    # applied offsets and the touch counter have no TTL: a volatile-* policy never evicts them
    assert options["--maxmemory-policy"] == "volatile-lru"
    assert int(options["--zset-max-listpack-entries"]) >= max(
        FeatureServiceSettings().seen_items, FeatureServiceSettings().bought_items)


def test_the_gateway_is_published_on_loopback_unless_told_otherwise(compose):
    for port in compose["services"]["gateway"]["ports"]:
        assert port.startswith("127.0.0.1:"), port


def _settings_names(settings_cls) -> set[str]:
    prefix = settings_cls.model_config["env_prefix"]
    return {prefix + name.upper() for name in settings_cls.model_fields}


def test_every_setting_the_compose_file_passes_exists(compose):
    """A misspelt RECSYS_* name would be ignored silently by pydantic-settings."""
    known = _settings_names(GatewaySettings) | _settings_names(FeatureServiceSettings)
    for name in ("gateway", "feature_service"):
        env = compose["services"][name]["environment"]
        unknown = sorted(set(env) - known)
        assert unknown == [], f"{name}: not a setting: {unknown}"
    assert set(compose["services"]["feature_service"]["environment"]) <= _settings_names(
        FeatureServiceSettings)


def _apply(monkeypatch, env: dict[str, str | None]) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RECSYS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if value is not None:  # None: passed through from the host, unset here
            monkeypatch.setenv(name, str(value))


@pytest.fixture
def settings(compose, monkeypatch) -> tuple[GatewaySettings, FeatureServiceSettings, FeatureServiceSettings]:
    """The settings each container would read (values parse: ints, booleans, literals)."""
    _apply(monkeypatch, compose["services"]["gateway"]["environment"])
    gateway = GatewaySettings()
    gateway_features = gateway.features()
    _apply(monkeypatch, compose["services"]["feature_service"]["environment"])
    features = FeatureServiceSettings()
    return gateway, gateway_features, features


def test_the_gateway_runs_as_in_production(settings, compose):
    gateway, _, features = settings
    assert gateway.store == "redis" and not gateway.embedded_consumer
    assert gateway.host == "0.0.0.0" and gateway.admin_token is None
    assert gateway.triton_model in (sig.RECOMMEND, sig.RECOMMEND_FUSED)
    services = compose["services"]
    host, port = gateway.triton_grpc_url.split(":")
    assert host == "triton" and port == "8001"
    # The gateway reads the catalog of the same repository Triton serves.
    triton_repo = next(v for v in services["triton"]["volumes"] if v["target"] == "/models")
    gateway_repo = next(v for v in services["gateway"]["volumes"]
                        if v["target"] == gateway.model_repository)
    assert gateway_repo["source"] == triton_repo["source"]
    assert features.catalog_path.startswith(gateway.model_repository + f"/{sig.RETRIEVE}/")
    published = {int(p.rsplit(":", 1)[1]) for p in services["gateway"]["ports"]}
    assert published == {gateway.port, gateway.grpc_port}


def test_gateway_and_consumers_agree(settings):
    """Same broker, topics, group, store and rules on both sides, or features go missing."""
    gateway, from_gateway, features = settings
    assert features.store == "redis" and features.redis_url.startswith("redis://redis:")
    for field in ("kafka_bootstrap_servers", "events_topic", "group_id", "store", "redis_url",
                  "redis_key_prefix", "history_items", "dlq_topic", "topic_partitions",
                  "affinity_half_life_ms", "trending_half_life_ms"):
        assert getattr(from_gateway, field) == getattr(features, field), field
    assert features.metrics_port and features.metrics_host == "0.0.0.0"


def test_kafka_init_creates_the_topics_the_services_use(settings, compose):
    gateway, _, features = settings
    init = compose["services"]["kafka-init"]["environment"]
    assert set(init["TOPICS"].split()) == {features.events_topic, features.dlq_topic,
                                           gateway.recommendations_topic}
    assert int(init["PARTITIONS"]) == features.topic_partitions
    assert init["BOOTSTRAP"] == features.kafka_bootstrap_servers
    assert not features.create_topics  # one owner of the partition count
    script = compose["services"]["kafka-init"]["command"][0]
    assert "--create --if-not-exists" in script and "$TOPICS" in script


def test_the_partition_count_is_one_variable(raw):
    """kafka-init and the settings read the same variable, so they cannot disagree."""
    partitions = raw["services"]["kafka-init"]["environment"]["PARTITIONS"]
    assert raw["x-features-env"]["RECSYS_FEATURES_TOPIC_PARTITIONS"] == partitions
    env = {"RECSYS_TOPIC_PARTITIONS": "12"}
    assert interpolate(raw["services"]["feature_service"]["environment"], env)[
        "RECSYS_FEATURES_TOPIC_PARTITIONS"] == "12"


def test_feature_service_replicas_fit_the_partitions(settings, compose):
    _, _, features = settings
    replicas = int(compose["services"]["feature_service"]["deploy"]["replicas"])
    assert replicas == 2 and replicas <= features.topic_partitions


def test_services_are_built_from_the_docker_folder(compose):
    for name, dockerfile in (("gateway", "gateway.Dockerfile"),
                             ("feature_service", "feature_service.Dockerfile")):
        build = compose["services"][name]["build"]
        assert (DOCKER / build["context"]).resolve() == REPO
        assert build["dockerfile"] == f"docker/{dockerfile}"
        assert (REPO / build["dockerfile"]).is_file()
        assert compose["services"][name]["healthcheck"]["test"][:3] == [
            "CMD", "python", "/app/healthcheck.py"]
