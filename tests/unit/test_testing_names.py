"""tocsin.testing.Names: every topic setting of the worker gets a name and a variable."""

from __future__ import annotations

import pytest

from tocsin.streams.worker.settings import Settings, Topics
from tocsin.testing import PROJECTED_TOPICS, TOPIC_FIELDS, Names, topic_env_var


def test_every_topic_setting_is_known() -> None:
    assert set(TOPIC_FIELDS) == set(Topics.model_fields)
    assert set(PROJECTED_TOPICS) <= set(TOPIC_FIELDS)


def test_fresh_names_give_every_topic_its_own_name() -> None:
    a, b = Names.fresh("x"), Names.fresh("x")
    assert a.app_id != b.app_id
    topics = a.all_topics()
    assert set(topics) == set(TOPIC_FIELDS)
    assert len(set(topics.values())) == len(TOPIC_FIELDS)
    assert not set(topics.values()) & set(Topics().model_dump().values())
    assert not set(topics.values()) & set(b.all_topics().values())
    assert topics["signals"] == f"sig-{a.app_id}"  # what older tests spelled by hand


def test_kept_topics_keep_their_default_names() -> None:
    names = Names.fresh("k", keep=("events",))
    assert names.topics.events == Topics().events
    assert names.topics.incidents != Topics().incidents
    with pytest.raises(ValueError, match="not topic settings"):
        Names.fresh("k", keep=("nope",))


def test_env_is_what_the_worker_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    names = Names.fresh("env").with_topics(events="shared.events")
    for key, value in names.env().items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.app_id == names.app_id
    assert settings.topics == names.topics
    assert settings.topics.events == "shared.events"


def test_unknown_topic_settings_are_refused() -> None:
    assert topic_env_var("spans") == "TOCSIN_TOPICS__SPANS"
    with pytest.raises(ValueError, match="not a topic setting"):
        topic_env_var("event")
    with pytest.raises(ValueError, match="not a topic setting"):
        Names.defaults().with_topics(event="x")
