"""Reusable constructs: typed props in, Google resources out; no knowledge of environments or settings.

This package is imported as ``infra.components`` (never put ``infra/`` itself on ``sys.path``: the
name would shadow the ``constructs`` library that CDK Terrain is built on).
"""
