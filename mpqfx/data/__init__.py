"""Data sets for compression runs: embedded Fashion-MNIST and ImageFolder trees."""
