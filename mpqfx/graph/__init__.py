"""Graph passes: trace, annotate, layer graph, rewrite."""
