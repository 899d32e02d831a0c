"""hybridpref: route pairwise preference instances to human or LM annotation."""

__version__ = "0.1.0"
