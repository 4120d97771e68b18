"""Rebuild the COVID-19 chest X-ray dataset of Zhong (arXiv 2007.09695) from its public sources.

A record flows one way through one module per stage:
manifest -> sources -> download -> filters -> convert -> split -> publish -> report.
"""

__version__ = "0.1.0"

CLASS_NAMES = ("COVID-19", "Normal", "Pneumonia")
"""The three classes of the release, in ClassLabel index order."""
