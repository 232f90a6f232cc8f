"""``mpqfx.compress``: warm start, supernet training, search, evaluation, report and export in one call."""

from mpqfx.compress.pipeline import CompressResult, PolicyResult, compress

__all__ = ["compress", "CompressResult", "PolicyResult"]
