"""Settings come from the environment once, and a bad value stops the start with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.settings import DEFAULT_ANTHROPIC_MODEL, Settings, SettingsError

from .conftest import ROOT


def test_defaults_pick_the_offline_writer_without_a_key() -> None:
    settings = Settings.from_env({})
    assert settings.provider == "offline"
    assert (settings.host, settings.port, settings.heartbeat_s) == ("0.0.0.0", 8000, 15.0)
    assert settings.drain_s + 2 < 10, "the shutdown budget must fit Cloud Run's 10 s grace"


def test_a_key_picks_anthropic_with_a_current_model() -> None:
    settings = Settings.from_env({"ANTHROPIC_API_KEY": "sk-ant-x"})
    assert settings.provider == "anthropic"
    assert settings.anthropic_model == DEFAULT_ANTHROPIC_MODEL
    from anthropic.resources.messages.messages import DEPRECATED_MODELS

    assert DEFAULT_ANTHROPIC_MODEL not in DEPRECATED_MODELS
    assert "sk-ant-x" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "PORT is 'eighty'; it must be a whole number."),
        ({"HEARTBEAT_SECONDS": "-1"}, "HEARTBEAT_SECONDS is '-1'; it must be zero or more."),
        ({"LLM_PROVIDER": "openai"}, "LLM_PROVIDER is 'openai'; use auto, anthropic or offline."),
        ({"LLM_PROVIDER": "anthropic"}, "ANTHROPIC_API_KEY is not set"),
        ({"STREAM_DELTAS": "maybe"}, "STREAM_DELTAS is 'maybe'; use 1 or 0."),
        ({"TRUSTED_PROXIES": "not-an-ip"}, "TRUSTED_PROXIES holds an address"),
        ({"MAX_RUNNING_JOBS": "0"}, "MAX_RUNNING_JOBS is 0; it must be at least 1."),
        ({"HEARTBEAT_SECONDS": "0"}, "HEARTBEAT_SECONDS is 0; it must be more than 0"),
        ({"FLY_MACHINE_ID": "Machine-1"}, "FLY_MACHINE_ID is 'Machine-1'; use 1 to 40 lowercase"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL must start with redis://"),
        ({"LEASE_SECONDS": "0.5"}, "LEASE_SECONDS is 0.5; it must be at least 1."),
    ],
)
def test_a_bad_value_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_the_server_refuses_to_start_on_a_bad_setting() -> None:
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True,
                            env={"PORT": "eighty"}, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == "articlestream: PORT is 'eighty'; it must be a whole number."
