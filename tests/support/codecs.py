"""Comparing two codecs for one document kind: the agent's pydantic-free one and the wire models.

A codec is a decoder (bytes -> model, raising `PayloadError`) and an encoder (model -> bytes). Two
codecs agree on a payload when they turn it into the same canonical bytes or refuse it for the same
reason; `reencoded` gives that outcome for one codec so a test compares two of them with `==`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from devicefabric.config.errors import PayloadError

M = TypeVar("M")


def reencoded(
    decode: Callable[[bytes], M], encode: Callable[[M], bytes], payload: bytes
) -> bytes | str:
    """`payload` decoded and encoded again (its canonical bytes), or the reason it is refused."""
    try:
        return encode(decode(payload))
    except PayloadError as exc:
        return exc.reason
