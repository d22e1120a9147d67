"""`devicefabric broker ...` commands (stub until the broker lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("broker", help="the embedded MQTT broker and mosquitto config generator")
