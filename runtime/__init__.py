"""IO utilities the programs share: files, time, back-off, process groups, task groups.

The layer between the programs (`broker`, `bridge`, `agent`, driven by `cli`) and the pure
contract (`config`): it may import `config`, never a program. The agent imports it, so nothing
here imports a heavy library (pydantic, yaml, amqtt, kubernetes): import-linter checks both.
"""
