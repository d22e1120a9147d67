"""`devicefabric bridge run`, `apply`, `delete`, `get`, `manifests` (stubs until the bridge lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("bridge", help="the bridge service")


def register_local_verbs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    del sub
