"""BitOPs and model size."""
