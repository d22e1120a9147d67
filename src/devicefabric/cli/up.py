"""`devicefabric up`: the embedded default (stub until the bridge lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("up", help="embedded broker + bridge on the local control plane")
