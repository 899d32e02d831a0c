"""Evaluation of routing strategies on pools with human and LM labels on the same pairs (gRPC-free)."""
