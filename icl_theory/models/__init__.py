"""Flax models: the LSA of Mahankali et al.; the softmax attention + MLP of Li et al."""
