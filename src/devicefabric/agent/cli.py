"""`devicefabric agent run` (stub until the agent lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("agent", help="the device agent")
