"""The contract every program shares: topics, wire models, resource models, names, credentials.

This is the bottom layer: it imports none of `broker`, `bridge`, `agent` (import-linter checks it)
and does no network IO. A topic string is spelled only in `config.topics`; every broker's access
rules are generated from `config.access`.
"""
