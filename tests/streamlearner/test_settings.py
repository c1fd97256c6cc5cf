import pytest

from streamlearner.settings import Settings, SettingsError, setting_specs


def test_defaults_build():
    s = Settings.from_env({})
    assert s.kafka.feedback_topic == "customer-feedback"
    assert s.kafka.source_topics() == {"customer-feedback": "feedback", "market-events": "market"}
    assert s.stream.batch_size > 0


def test_env_values_are_parsed_by_type():
    s = Settings.from_env({"STREAM_BATCH_SIZE": "8", "STREAM_MAX_WAIT_S": "0.5",
                           "LEARNER_FREEZE_ENCODER": "true", "KAFKA_BOOTSTRAP": "h:9092,g:9093",
                           "LEARNER_MODEL": ""})
    assert s.stream.batch_size == 8 and s.stream.max_wait_s == 0.5
    assert s.learner.freeze_encoder is True
    assert s.kafka.bootstrap == "h:9092,g:9093"
    assert s.learner.model is None


def test_overrides_beat_env():
    s = Settings.from_env({"STREAM_BATCH_SIZE": "8"}, overrides={"STREAM_BATCH_SIZE": "4"})
    assert s.stream.batch_size == 4


@pytest.mark.parametrize("env, name", [
    ({"STREAM_BATCH_SIZE": "0"}, "STREAM_BATCH_SIZE"),
    ({"STREAM_BATCH_SIZE": "many"}, "STREAM_BATCH_SIZE"),
    ({"STREAM_MAX_WAIT_S": "-1"}, "STREAM_MAX_WAIT_S"),
    ({"KAFKA_BOOTSTRAP": "no port"}, "KAFKA_BOOTSTRAP"),
    ({"KAFKA_FEEDBACK_TOPIC": "bad topic!"}, "KAFKA_FEEDBACK_TOPIC"),
    ({"KAFKA_MARKET_TOPIC": "customer-feedback"}, "KAFKA_MARKET_TOPIC"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
    ({"MEMORY_CAPACITY": "0"}, "MEMORY_CAPACITY"),
    ({"LEARNER_LR": "-1"}, "LEARNER_LR"),
    ({"LEARNER_DEVICE": "tpu"}, "LEARNER_DEVICE"),
    ({"LEARNER_FREEZE_ENCODER": "maybe"}, "LEARNER_FREEZE_ENCODER"),
    ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
    ({"CHECKPOINT_KEEP_LAST": "0"}, "CHECKPOINT_KEEP_LAST"),
])
def test_bad_settings_fail_fast_naming_the_setting(env, name):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(name), str(err.value)


def test_password_never_in_repr():
    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u",
                           "KAFKA_SASL_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(s)
    assert s.kafka.client_kwargs()["sasl_plain_password"] == "hunter2"


def test_every_setting_is_documented_in_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [s.env for s in setting_specs() if f"`{s.env}`" not in readme]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


@pytest.mark.parametrize("env, name", [
    ({"DRIFT_WINDOW": "0"}, "DRIFT_WINDOW"),
    ({"DRIFT_REFERENCE": "-5"}, "DRIFT_REFERENCE"),
    ({"DRIFT_EVERY": "0"}, "DRIFT_EVERY"),
    ({"DRIFT_P_VALUE": "0"}, "DRIFT_P_VALUE"),
    ({"DRIFT_P_VALUE": "1"}, "DRIFT_P_VALUE"),
    ({"DRIFT_P_VALUE": "1.5"}, "DRIFT_P_VALUE"),
    ({"DRIFT_P_VALUE": "0.0001"}, "DRIFT_PERMUTATIONS"),
    ({"DRIFT_CONCEPT_DETECTOR": "ddm"}, "DRIFT_CONCEPT_DETECTOR"),
    ({"DRIFT_ADWIN_DELTA": "2"}, "DRIFT_ADWIN_DELTA"),
    ({"KAFKA_DRIFT_TOPIC": "predictions"}, "KAFKA_DRIFT_TOPIC"),
    ({"METRICS_PROBE_SIZE": "-1"}, "METRICS_PROBE_SIZE"),
])
def test_bad_drift_settings_fail_fast_naming_the_setting(env, name):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(name), str(err.value)


def test_worker_refuses_to_start_on_a_bad_drift_setting():
    import os
    import subprocess
    import sys

    env = dict(os.environ, DRIFT_WINDOW="0")
    out = subprocess.run([sys.executable, "-m", "streamlearner.cli", "worker"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "bad setting: DRIFT_WINDOW: window must be >= 1, got 0" in out.stderr


def test_env_file_is_below_environment_and_flags(tmp_path):
    path = tmp_path / "tuned.env"
    path.write_text("# best trial\nLEARNER_LR=0.002\nSTREAM_BATCH_SIZE=8\n"
                    "export MEMORY_REPLAY_RATIO='2.5'\n\n")
    s = Settings.from_env({"STREAM_BATCH_SIZE": "16"}, overrides={}, env_file=str(path))
    assert s.learner.lr == 0.002 and s.memory.replay_ratio == 2.5
    assert s.stream.batch_size == 16          # the environment beats the file
    s = Settings.from_env({"STREAMLEARNER_ENV_FILE": str(path)},
                          overrides={"LEARNER_LR": "0.01"})
    assert s.learner.lr == 0.01 and s.stream.batch_size == 8


@pytest.mark.parametrize("text, name", [
    ("LEARNER_LRR=1\n", "LEARNER_LRR"),
    ("just words\n", "STREAMLEARNER_ENV_FILE"),
    ("LEARNER_LR=fast\n", "LEARNER_LR"),
])
def test_bad_env_file_names_the_setting(tmp_path, text, name):
    path = tmp_path / "bad.env"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        Settings.from_env({}, env_file=str(path))
    assert str(err.value).startswith(name)


def test_missing_env_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="STREAMLEARNER_ENV_FILE: cannot read"):
        Settings.from_env({}, env_file=str(tmp_path / "nope.env"))
