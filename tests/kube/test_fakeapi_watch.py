"""The fake API server, lists and watches: revisions, bookmarks, 410 Expired, drops, selectors.

The informer of the bridge stands on these: a list's resourceVersion, a watch from it that sees
each later change once and in order, bookmarks that move a watcher past changes it does not see,
`ERROR 410 Expired` after compaction, and a cut connection the client can tell from a clean end.
"""

from __future__ import annotations

import threading
from typing import Any

from tests.support.fakeapi import FakeApiServer
from tests.support.fakeapi.client import (
    LEASES,
    Http,
    Response,
    WatchEnded,
    created,
    device_process,
    dp_path,
    lease,
    rv,
    take,
)
from tests.support.waiting import wait_for


# -- list and watch ----------------------------------------------------------------------------
def test_list_then_watch_from_its_revision_sees_each_change_once_in_order(http: Http) -> None:
    created(http, "p1")
    listing = http.get(dp_path())
    assert listing.body["kind"] == "DeviceProcessList"
    assert [i["metadata"]["name"] for i in listing.body["items"]] == ["p1"]
    list_rv = listing.body["metadata"]["resourceVersion"]
    created(http, "p2")
    http.merge(dp_path(name="p1"), {"spec": {"suspend": True}})
    assert http.request("DELETE", dp_path(name="p2")).status == 200
    events = take(http.watch(dp_path(), resourceVersion=list_rv), 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "p2"),
        ("MODIFIED", "p1"),
        ("DELETED", "p2"),
    ]
    revisions = [rv(e["object"]) for e in events]
    assert revisions == sorted(revisions)
    assert http.get(dp_path(name="p2")).status == 404


def test_watch_without_revision_starts_with_synthetic_added(http: Http) -> None:
    created(http, "p1")
    events = take(http.watch(dp_path()), 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "p1")]


def test_bookmarks_only_when_allowed_and_carry_the_current_revision(
    http: Http, api: FakeApiServer
) -> None:
    """A bookmark moves a watcher past changes to other kinds or namespaces it does not see."""
    created(http)
    assert http.request("POST", LEASES, lease("a")).status == 201  # the revision moves on
    ended = WatchEnded()
    events = list(
        http.watch(
            dp_path(), ended, resourceVersion="1", allowWatchBookmarks="true", timeoutSeconds="1"
        )
    )
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[-1]["object"]["metadata"]["resourceVersion"] == str(api.store.resource_version)
    assert ended.clean
    plain = list(http.watch(dp_path(), resourceVersion="1", timeoutSeconds="1"))
    assert [e["type"] for e in plain] == ["ADDED"]


def test_compacted_revision_gets_410_expired_error_event(http: Http, api: FakeApiServer) -> None:
    first = created(http)
    http.merge(dp_path(name="p1"), {"spec": {"suspend": True}})
    api.compact()
    ended = WatchEnded()
    events = list(
        http.watch(dp_path(), ended, resourceVersion=first["metadata"]["resourceVersion"])
    )
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")
    assert ended.clean
    current = str(api.store.resource_version)
    assert take(http.watch(dp_path(), resourceVersion=current, timeoutSeconds="1"), 1) == []


def test_drop_watches_cuts_the_connection_mid_stream(http: Http, api: FakeApiServer) -> None:
    ended = WatchEnded()
    received: list[dict[str, Any]] = []

    def reader() -> None:
        received.extend(
            http.watch(dp_path(), ended, resourceVersion="1", allowWatchBookmarks="true")
        )

    thread = threading.Thread(target=reader)
    thread.start()
    wait_for(lambda: api.active_watches("deviceprocesses") == 1, what="the watch to open")
    assert api.drop_watches() == 1
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert not ended.clean
    assert ended.error
    wait_for(lambda: api.active_watches() == 0, what="the server to forget the watch")


def test_label_and_field_selectors_and_pages(http: Http) -> None:
    for name in ("a", "b", "c"):
        obj = device_process(name)
        obj["metadata"]["labels"] = {"tier": "edge" if name != "b" else "core"}
        assert http.create(obj).status == 201

    def names(resp: Response) -> list[str]:
        return [i["metadata"]["name"] for i in resp.body["items"]]

    assert names(http.get(dp_path(), labelSelector="tier=edge")) == ["a", "c"]
    assert names(http.get(dp_path(), labelSelector="tier notin (edge)")) == ["b"]
    assert names(http.get(dp_path(), fieldSelector="metadata.name=b")) == ["b"]
    first = http.get(dp_path(), limit="2")
    assert names(first) == ["a", "b"]
    rest = http.get(dp_path(), limit="2", **{"continue": first.body["metadata"]["continue"]})
    assert names(rest) == ["c"]
    assert "continue" not in rest.body["metadata"]
    assert http.get(dp_path(), fieldSelector="spec.deviceName=x").status == 400
