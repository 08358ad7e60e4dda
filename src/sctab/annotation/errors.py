"""The one error annotation raises for anything wrong with the input, the model or the output path.

It is the input-data error of :mod:`sctab.census.counts` (the counts and gene rules annotation shares with the
h5ad reference source), so a caller catches one class whichever layer found the problem.
"""

from sctab.census.counts import InputError as AnnotateError

__all__ = ["AnnotateError"]
