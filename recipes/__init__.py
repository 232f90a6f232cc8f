"""Shipped recipes (YAML); load them with ``mpqfx.Recipe.load(name)``."""
