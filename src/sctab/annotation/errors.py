"""The one error annotation raises for anything wrong with the input, the model or the output path."""


class AnnotateError(ValueError):
    """Bad input file, unusable counts, no shared genes, unknown model: the message says which and what to do."""
