"""Rebuild the COVID-19 chest X-ray dataset of Zhong (arXiv 2007.09695) from its public sources.

A record flows one way through one module per stage, in the order ``build.py`` runs them:
manifest -> sources -> filters -> split (``plan``) -> fetch (``download/``) -> filters (exact duplicates)
-> convert + shards -> report -> card. ``release`` reads what a build wrote; every import points down
that order (tests/test_layout.py, ``LAYERS``).
"""

__version__ = "0.1.0"

CLASS_NAMES = ("COVID-19", "Normal", "Pneumonia")
"""The three classes of the release, in ClassLabel index order."""
