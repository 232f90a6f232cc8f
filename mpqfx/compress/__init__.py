"""``mpqfx.compress``: warm start, supernet training, search, evaluation, report and export in one call."""

from mpqfx.compress.evaluation import PolicyResult
from mpqfx.compress.pipeline import CompressResult, ExportFailed, compress

__all__ = ["compress", "CompressResult", "ExportFailed", "PolicyResult"]
