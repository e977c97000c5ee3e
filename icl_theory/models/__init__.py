"""Flax models: the LSA of Mahankali et al."""
