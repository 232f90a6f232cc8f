"""Quantizers, multi-bit layers, Transitional BN and policies."""
