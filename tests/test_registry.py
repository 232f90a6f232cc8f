"""The registries of strategies and search backends."""

from mpqfx.search.backend import SEARCHES


def test_a_declared_entry_is_found_after_its_registration_was_rolled_back(monkeypatch):
    """A test that snapshots and restores a registry (as the cookbook test does) may import a
    declared entry's module in between: the module is then cached and registers nothing again."""
    from mpqfx.search.ilp import IlpSearch

    monkeypatch.setattr(SEARCHES, "_entries", {k: v for k, v in SEARCHES._entries.items() if k != "ilp"})
    assert SEARCHES.get("ilp") is IlpSearch
    assert "ilp" in SEARCHES._entries
