"""Chaos runs of the whole local system: seeded faults during the e2e flow, invariants at the end.

``python -m chaos.run`` (``make chaos``) is the long form; ``tests/integration/chaos`` runs a short,
seeded form under ``make test``. See docs/reliability.md.
"""
