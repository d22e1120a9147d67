"""JSON merge patch: RFC 7386's own examples (its appendix A), and no argument is ever changed."""

from __future__ import annotations

import copy
import json

import pytest

from devicefabric.config.mergepatch import merge_patch

# (original, patch, result) exactly as RFC 7386 appendix A lists them, in JSON
APPENDIX_A = [
    ('{"a":"b"}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"b"}', '{"b":"c"}', '{"a":"b","b":"c"}'),
    ('{"a":"b"}', '{"a":null}', "{}"),
    ('{"a":"b","b":"c"}', '{"a":null}', '{"b":"c"}'),
    ('{"a":["b"]}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"c"}', '{"a":["b"]}', '{"a":["b"]}'),
    ('{"a":{"b":"c"}}', '{"a":{"b":"d","c":null}}', '{"a":{"b":"d"}}'),
    ('{"a":[{"b":"c"}]}', '{"a":[1]}', '{"a":[1]}'),
    ('["a","b"]', '["c","d"]', '["c","d"]'),
    ('{"a":"b"}', '["c"]', '["c"]'),
    ('{"a":"foo"}', "null", "null"),
    ('{"a":"foo"}', '"bar"', '"bar"'),
    ('{"e":null}', '{"a":1}', '{"e":null,"a":1}'),
    ("[1,2]", '{"a":"b","c":null}', '{"a":"b"}'),
    ("{}", '{"a":{"bb":{"ccc":null}}}', '{"a":{"bb":{}}}'),
]


@pytest.mark.parametrize(("original", "patch", "result"), APPENDIX_A)
def test_rfc7386_appendix_a(original: str, patch: str, result: str) -> None:
    target, body = json.loads(original), json.loads(patch)
    before = copy.deepcopy((target, body))
    assert merge_patch(target, body) == json.loads(result)
    assert (target, body) == before  # neither argument changed


def test_a_nested_merge_builds_new_objects_along_its_path_only() -> None:
    untouched = {"x": [1, 2]}
    target = {"status": {"phase": "Running", "n": 1}, "spec": untouched}
    merged = merge_patch(target, {"status": {"n": 2}})
    assert merged == {"status": {"phase": "Running", "n": 2}, "spec": {"x": [1, 2]}}
    assert target["status"] == {"phase": "Running", "n": 1}  # the old status is still the old
    assert merged["spec"] is untouched  # what the patch did not touch is shared, not copied
