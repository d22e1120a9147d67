"""Scenario 8, identities and topics: names, topic parsing, filter algebra and the access rules.

- `validate_device` on any text raises only `InvalidDeviceNameError` with a reason, and agrees
  with `is_device_name`; every accepted name is a usable identity (a topic level that parses
  back, a derivable password).
- `Topics.parse` on any text and on near misses of real topics raises only `TopicError` with a
  reason, and whatever it accepts is rebuilt by the builders to the very same string.
- `matches` / `covers` / `is_valid_filter` are consistent: `covers(a, r)` and `matches(r, t)`
  imply `matches(a, t)` (what makes a granted subscription safe), `covers` is reflexive and
  transitive, and on a concrete topic it is `matches`.
- The access rules: for random device names and topics, a device never publishes to, sets a will
  on, subscribes to or receives from another device's topics; an invalid name has no rights and no
  client id; `check_password` never raises and accepts only the derived password.
"""

from __future__ import annotations

from typing import Final

from hypothesis import example, given
from hypothesis import strategies as st

from devicefabric.config.access import (
    NO_ACCESS,
    Role,
    client_id_allowed,
    role_of,
    rules_for,
)
from devicefabric.config.credentials import check_password, password_for
from devicefabric.config.errors import InvalidDeviceNameError, TopicError
from devicefabric.config.names import RESERVED_NAMES, is_device_name, validate_device
from devicefabric.config.topics import (
    DeviceTopic,
    Topics,
    covers,
    is_valid_filter,
    matches,
    validate_publish_topic,
    validate_root,
)
from tests.faults.budget import FUZZ, MARKS, outcome
from tests.faults.strategies import (
    device_names,
    hostile_names,
    near_miss,
    near_miss_topics,
    neighbour,
    topic_levels,
)

pytestmark = list(MARKS)

T: Final = Topics()
SECRET: Final = b"fuzz-secret-0123456789abcdef"
LEVELS: Final = st.sampled_from(["a", "b", "$a", "", "+", "#"])
TOPIC_LEVELS: Final = st.sampled_from(["a", "b", "$a", ""])


def _filters() -> st.SearchStrategy[str]:
    """Short filters over a tiny alphabet (so they meet), valid by MQTT's rules."""
    return st.lists(LEVELS, min_size=1, max_size=4).map("/".join).filter(is_valid_filter)


def _topics() -> st.SearchStrategy[str]:
    return st.lists(TOPIC_LEVELS, min_size=1, max_size=4).map("/".join)


# -- device names ----------------------------------------------------------------------------------
@FUZZ
@given(name=st.text(max_size=80) | hostile_names() | device_names())
@example(name="a" * 300)
@example(name="dev-a\n")
def test_validate_device_refuses_with_a_reason_and_agrees_with_is_device_name(name: str) -> None:
    accepted = outcome(lambda: validate_device(name), InvalidDeviceNameError)
    if isinstance(accepted, InvalidDeviceNameError):
        assert accepted.why.strip()
        assert accepted.name == name
        assert "\n" not in str(accepted), "a multi-line error"
        assert len(str(accepted)) < 600, "the error echoes an unbounded name"
        assert not is_device_name(name)
        return
    assert accepted == name
    assert is_device_name(name)
    assert name.isascii()
    assert 1 <= len(name) <= 63
    assert name not in RESERVED_NAMES
    for kind in DeviceTopic:
        parsed = T.parse(T.device(name, kind))
        assert (parsed.device, parsed.kind) == (name, kind)
    assert check_password(SECRET, name, password_for(SECRET, name))


# -- topic parsing ---------------------------------------------------------------------------------
def check_parse(topic: str) -> bool:
    """Parse `topic`; a rejection has a reason, an acceptance rebuilds to the same string."""
    parsed = outcome(lambda: T.parse(topic), TopicError)
    if isinstance(parsed, TopicError):
        assert parsed.why.strip()
        assert parsed.topic == topic
        return False
    if parsed.is_bridge_status:
        assert topic == T.bridge_status()
        assert parsed.device is None
    else:
        assert parsed.device is not None
        assert parsed.kind is not None
        assert is_device_name(parsed.device)
        assert T.device(parsed.device, parsed.kind) == topic
    assert not T.is_sync_marker(topic)
    return True


@FUZZ
@given(topic=st.text(max_size=80))
def test_parse_on_arbitrary_text(topic: str) -> None:
    check_parse(topic)


@FUZZ
@given(topic=near_miss_topics())
def test_parse_on_near_miss_topics(topic: str) -> None:
    check_parse(topic)


@FUZZ
@given(root=st.text(max_size=20) | near_miss(st.just("fabric/v1")), name=device_names())
def test_any_accepted_root_builds_topics_that_parse_back(root: str, name: str) -> None:
    checked = outcome(lambda: validate_root(root), TopicError)
    if isinstance(checked, TopicError):
        assert checked.why.strip()
        return
    topics = Topics(root)
    for kind in DeviceTopic:
        topic = topics.device(name, kind)
        assert validate_publish_topic(topic) == topic
        assert topics.parse(topic).device == name
        assert matches(topics.everything(), topic)
        assert matches(topics.all_devices(kind), topic)
    assert topics.parse(topics.bridge_status()).is_bridge_status


@FUZZ
@given(topic=st.text(max_size=40) | near_miss_topics())
def test_validate_publish_topic(topic: str) -> None:
    checked = outcome(lambda: validate_publish_topic(topic), TopicError)
    if isinstance(checked, TopicError):
        assert checked.why.strip()
        return
    assert topic
    assert not any(ch in topic for ch in "+#\x00")
    assert not topic.startswith("$")
    assert is_valid_filter(topic)
    assert matches(topic, topic)


# -- filter algebra --------------------------------------------------------------------------------
@FUZZ
@given(allowed=_filters(), requested=_filters(), topic=_topics())
@example(allowed="#", requested="$a/#", topic="$a/b")
@example(allowed="+", requested="$a", topic="$a")
def test_covers_is_sound_for_matches(allowed: str, requested: str, topic: str) -> None:
    """A subscription `covers` grants never delivers a topic the grant does not match."""
    if covers(allowed, requested) and matches(requested, topic):
        assert matches(allowed, topic), (allowed, requested, topic)


@FUZZ
@given(a=_filters(), b=_filters(), c=_filters(), topic=_topics())
def test_covers_is_reflexive_transitive_and_matches_on_concrete_topics(
    a: str, b: str, c: str, topic: str
) -> None:
    assert covers(a, a)
    if covers(a, b) and covers(b, c):
        assert covers(a, c), (a, b, c)
    assert covers(a, topic) == matches(a, topic), (a, topic)


@FUZZ
@given(topic_filter=st.text(max_size=30), topic=st.text(max_size=30))
def test_filter_functions_never_raise(topic_filter: str, topic: str) -> None:
    assert isinstance(matches(topic_filter, topic), bool)
    assert isinstance(covers(topic_filter, topic), bool)
    if is_valid_filter(topic_filter):
        assert topic_filter
        assert "\x00" not in topic_filter


# -- access rules ----------------------------------------------------------------------------------
def _own(device: str, topic: str) -> bool:
    """True when `topic` is one of `device`'s topics, or the bridge status."""
    try:
        parsed = T.parse(topic)
    except TopicError:
        return False
    return parsed.is_bridge_status or parsed.device == device


@FUZZ
@given(device=device_names(), other=device_names(), data=st.data())
def test_a_device_never_reaches_another_devices_topics(
    device: str, other: str, data: st.DataObject
) -> None:
    other = other if other != device else neighbour(device)
    rules = rules_for(device, T)
    levels = topic_levels(device, other)
    built = data.draw(st.lists(levels, min_size=1, max_size=7).map("/".join))
    topic = data.draw(st.sampled_from([built, *(T.device(other, kind) for kind in DeviceTopic)]))

    if rules.may_publish(topic) or rules.may_will(topic):
        assert _own(device, topic), topic
        assert not T.parse(topic).is_bridge_status
    if rules.may_will(topic):
        assert topic == T.status(device)
    if rules.may_receive(topic):
        assert _own(device, topic), topic
    if rules.may_subscribe(topic):  # `topic` as a filter, wildcards and all
        for kind in DeviceTopic:
            assert not matches(topic, T.device(other, kind)), topic
        probe = data.draw(st.lists(levels, min_size=1, max_size=7).map("/".join))
        if matches(topic, probe):
            assert rules.may_receive(probe), (topic, probe)
    for kind in DeviceTopic:
        theirs = T.device(other, kind)
        assert not rules.may_publish(theirs)
        assert not rules.may_will(theirs)
        assert not rules.may_receive(theirs)
        assert not rules.may_subscribe(theirs)


@FUZZ
@given(user=st.text(max_size=70) | hostile_names() | device_names(), client_id=st.text(max_size=70))
def test_client_ids_and_rights_follow_the_role(user: str, client_id: str) -> None:
    role = role_of(user)
    allowed = client_id_allowed(user, client_id)
    if role is None:
        assert not allowed
        assert rules_for(user, T) == NO_ACCESS
    elif role is Role.DEVICE:
        assert allowed == (client_id == user)
        assert client_id_allowed(user, user)
    else:
        prefix = f"{role.value}_"
        assert allowed == (client_id.startswith(prefix) and client_id != prefix)
        assert not (allowed and is_device_name(client_id))
    if role is Role.OBSERVER:
        assert rules_for(user, T).publish == ()


@FUZZ
@given(
    user=st.text(max_size=70) | hostile_names() | device_names(),
    password=st.text(max_size=60) | st.binary(max_size=60) | st.none(),
)
def test_check_password_never_raises_and_accepts_only_the_derived_password(
    user: str, password: str | bytes | None
) -> None:
    right = password_for(SECRET, user) if role_of(user) is not None else None
    given_text = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
    assert check_password(SECRET, user, password) is (right is not None and given_text == right)
    if right is not None:
        assert check_password(SECRET, user, right)
        assert check_password(SECRET, user, right.encode())
        assert not check_password(SECRET, user, right + "x")
        assert not check_password(SECRET, user, right.upper())
    else:
        assert not check_password(SECRET, user, "x" * 43)
