"""Kafka SSL/SASL settings from the environment reach every client, and no secret is
printed: Faust (aiokafka) through ``broker_credentials``, kafka-python through
``KafkaConfig.client_kwargs()`` in ``topics create``, ``publish``, ``dlq replay`` and the demo."""

from __future__ import annotations

import logging
import re

import pytest

from streamlearner.cli import main
from streamlearner.settings import Settings, setting_specs

from tests.fake_kafka import FakeKafka

SECRET = "s3cr3t-canary-pw-7f9c"
SASL_ENV = {
    "KAFKA_BOOTSTRAP": "broker1:9093,broker2:9093",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "streamlearner",
    "KAFKA_SASL_PASSWORD": SECRET,
    "KAFKA_SSL_CAFILE": "/etc/ssl/certs/ca-certificates.crt",
}
EXPECTED_KWARGS = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "streamlearner",
    "sasl_plain_password": SECRET,
    "ssl_cafile": "/etc/ssl/certs/ca-certificates.crt",
}


@pytest.fixture
def sasl_env(monkeypatch):
    for spec in setting_specs():
        monkeypatch.delenv(spec.env, raising=False)
    for name, value in SASL_ENV.items():
        monkeypatch.setenv(name, value)
    return SASL_ENV


@pytest.fixture
def fake(monkeypatch):
    return FakeKafka().install(monkeypatch)


def assert_secure(kwargs: dict) -> None:
    assert {k: kwargs.get(k) for k in EXPECTED_KWARGS} == EXPECTED_KWARGS
    assert kwargs["bootstrap_servers"] == SASL_ENV["KAFKA_BOOTSTRAP"]


def test_client_kwargs_from_env(sasl_env):
    assert Settings.from_env().kafka.client_kwargs() == EXPECTED_KWARGS


@pytest.mark.parametrize("env, expected", [
    ({}, {"security_protocol": "PLAINTEXT"}),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/ca.pem"},
     {"security_protocol": "SSL", "ssl_cafile": "/ca.pem"}),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
      "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
     {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
      "sasl_plain_username": "u", "sasl_plain_password": "p"}),
])
def test_client_kwargs_per_protocol(env, expected):
    assert Settings.from_env(env).kafka.client_kwargs() == expected


def test_cli_topics_create_passes_security(sasl_env, fake):
    assert main(["topics", "create"]) == 0
    (kwargs,) = fake.kwargs_of("KafkaAdminClient")
    assert_secure(kwargs)


def test_cli_publish_passes_security(sasl_env, fake, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id": "a", "text": "hello"}\n')
    assert main(["publish", "customer-feedback", str(path)]) == 0
    (kwargs,) = fake.kwargs_of("KafkaProducer")
    assert_secure(kwargs)
    assert [r.value for r in fake.records("customer-feedback")] == [b'{"id": "a", "text": "hello"}']


def test_cli_dlq_replay_passes_security_to_every_client(sasl_env, fake, capsys, caplog):
    from streams.records import Reason, dead_letter

    rec = dead_letter(b"x", topic="customer-feedback", partition=0, offset=1,
                      reason=Reason.invalid_json, message="m", ts=1.0)
    fake.append("dead-letters", rec.dumps(serializer="json"))
    fake.create("customer-feedback")
    with caplog.at_level(logging.DEBUG):
        assert main(["dlq", "replay"]) == 0
    kinds = [name for name, _ in fake.clients]
    assert {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient"} <= set(kinds)
    for _, kwargs in fake.clients:
        assert_secure(kwargs)
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text


def test_demo_follower_passes_security(sasl_env, fake):
    from tools.demo import Follower

    k = Settings.from_env().kafka
    fake.create("predictions")
    fake.create("dead-letters")
    follower = Follower(k.servers, "predictions", "dead-letters",
                        client_kwargs=k.client_kwargs()).start()
    follower.stop()
    (kwargs,) = fake.kwargs_of("KafkaConsumer")
    assert_secure(kwargs)
    assert SECRET not in repr(follower)


def test_demo_worker_gets_security_settings_through_its_environment(sasl_env):
    from tools.demo import security_env

    env = security_env(Settings.from_env(overrides={"KAFKA_SASL_PASSWORD": "from-a-flag"}).kafka)
    assert env == {k: v for k, v in dict(SASL_ENV, KAFKA_SASL_PASSWORD="from-a-flag").items()
                   if k != "KAFKA_BOOTSTRAP"}


# -- Faust / aiokafka --------------------------------------------------------------------------

def test_faust_credentials_reach_aiokafka(sasl_env, monkeypatch):
    monkeypatch.delenv("KAFKA_SSL_CAFILE")  # the system CA store: the context must load
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.app import _credentials

    k = Settings.from_env().kafka
    creds = _credentials(k)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("streamlearner", SECRET)
    assert auth["ssl_context"] is not None
    assert SECRET not in repr(creds) and SECRET not in str(creds)


@pytest.mark.parametrize("env, protocol", [
    ({"KAFKA_SECURITY_PROTOCOL": "SSL"}, "SSL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
      "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "SASL_PLAINTEXT"),
    ({}, "PLAINTEXT"),
])
def test_faust_credentials_per_protocol(env, protocol):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.app import _credentials

    auth = credentials_to_aiokafka_auth(_credentials(Settings.from_env(env).kafka))
    assert auth["security_protocol"] == protocol
    if protocol == "SASL_PLAINTEXT":
        assert auth["ssl_context"] is None and auth["sasl_plain_password"] == "p"


def test_worker_app_is_built_with_the_credentials(sasl_env, tmp_path, monkeypatch):
    """create_app hands the credentials to Faust's broker configuration."""
    monkeypatch.delenv("KAFKA_SSL_CAFILE")
    from prometheus_client import CollectorRegistry

    from streams.acks import FailStop
    from streams.app import create_app

    settings = Settings.from_env(overrides={"CHECKPOINT_DIR": str(tmp_path)})
    app = create_app(settings, app_id="sl-security", data_dir=str(tmp_path / "faust"),
                     registry=CollectorRegistry(), latch=FailStop())
    creds = app.conf.broker_credentials
    assert creds.username == "streamlearner" and creds.password == SECRET
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"


# -- nothing secret in reprs or logs ------------------------------------------------------------

SECRET_SETTING = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL", re.IGNORECASE)


def test_every_secret_setting_is_masked_in_the_settings_repr():
    """Catches a new secret-like setting whose section forgets to mask it."""
    secrets = [s.env for s in setting_specs() if SECRET_SETTING.search(s.env)]
    assert "KAFKA_SASL_PASSWORD" in secrets
    env = {name: f"canary-{name.lower()}-0123456789abcdef" for name in secrets}
    settings = Settings.from_env(env)
    shown = repr(settings) + str(settings) + f"{settings!r}"
    for section in ("kafka", "serve"):
        shown += repr(getattr(settings, section))
    for name, value in env.items():
        assert value not in shown, f"{name} appears in the settings repr"


def test_worker_start_log_line_has_no_secret(sasl_env, caplog):
    """The worker logs ``settings: %r`` at start (streams/worker.py)."""
    settings = Settings.from_env()
    with caplog.at_level(logging.INFO):
        logging.getLogger("streamlearner.roles").info("settings: %r", settings)
    assert "settings: Settings(" in caplog.text and SECRET not in caplog.text
    assert "sasl_password='***'" in caplog.text


def test_the_producer_lingers_as_set(tmp_path):
    """KAFKA_PRODUCER_LINGER_MS reaches Faust's producer (5 ms by default, 0: send at once)."""
    from prometheus_client import CollectorRegistry

    from streams.acks import FailStop
    from streams.app import create_app

    for env, expected in (({}, 0.005), ({"KAFKA_PRODUCER_LINGER_MS": "0"}, 0.0)):
        settings = Settings.from_env({"CHECKPOINT_DIR": str(tmp_path), **env})
        app = create_app(settings, app_id="sl-linger", data_dir=str(tmp_path / "faust"),
                         registry=CollectorRegistry(), latch=FailStop())
        assert app.conf.producer_linger == pytest.approx(expected)
        assert app.producer.linger_ms == round(expected * 1000)
