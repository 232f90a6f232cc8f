"""Property-based tests of the recipe and policy loaders (issue "Reliability", item "Fuzzing").

Whatever text they are given, ``Recipe.from_yaml`` and ``Policy.from_yaml`` / ``from_json`` /
``load`` either return an object that round-trips through its own serialisation, or raise the
documented error type (RecipeError with a non-empty list of problems, PolicyError). Anything
else (TypeError, KeyError, OverflowError, ValueError from int parsing, RecursionError...) is a bug.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

import mpqfx
from mpqfx import LayerKind, Policy, PolicyError, Recipe, RecipeError, Role
from mpqfx.graph.layer_info import LayerInfo
from mpqfx.quant.policy import FORMAT

# MPQFX_FUZZ_SCALE=20 runs twenty times the examples (still derandomized) for a longer local hunt.
SCALE = int(os.environ.get("MPQFX_FUZZ_SCALE", "1"))
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large,
                                                                       HealthCheck.filter_too_much])

BASE_RECIPE = Recipe.load("oneshot").to_dict()
STRATEGIES = ("oneshot", "limpq", "double_rounding", "bitmixer", "float", "nope", "")
BACKENDS = ("ilp", "greedy", "hessian", "nope", "")
HUGE_INTS = [2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**30), 10**300]
ODD_FLOATS = [1e308, -1e308, 1.7976931348623157e308, 5e-324, -0.0, 0.0, math.inf, -math.inf, math.nan, 1e-5]
ODD_STRINGS = ["", " ", "transitional", "switchable", "shared", "lsq", "double_rounding", "sgd", "adamw", "cosine",
               "value", "norm", "oneshot", "ilp", "max", "uniform:4", "1e-5", "1e400", "-1e400", "nan", "inf",
               "-inf", "1_000", "0x10", "ünïcødé", "名前", "🙂🙃", "\u202eevil", "a\x00b", "tab\there", "\ufeff",
               "line\nbreak", "yes", "null", "~", "2001-12-14", "'quoted'", '"dq"', "- item", "key: value"]


# -- value strategies ----------------------------------------------------------------------------
ints = st.one_of(st.integers(-3, 12), st.integers(), st.sampled_from(HUGE_INTS))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(ODD_FLOATS),
                   st.floats(0, 1))
texts = st.one_of(st.text(max_size=12), st.sampled_from(ODD_STRINGS))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
keys = st.one_of(texts, st.integers(-5, 5), st.booleans(), st.none())
yaml_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(keys, inner, max_size=4)),
                           max_leaves=12)


def _same_type_value(value: Any) -> st.SearchStrategy:
    """A plausible replacement for ``value``: same type, often in the valid range."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.integers(-2, 10), st.integers(0, 2000), ints)
    if isinstance(value, float):
        return st.one_of(st.floats(0, 1), st.floats(-1, 2), floats, st.sampled_from(["1e-5", "0.5", "nan", "3"]))
    if isinstance(value, str):
        return st.one_of(st.sampled_from(ODD_STRINGS), texts, st.sampled_from(STRATEGIES + BACKENDS))
    if isinstance(value, list):
        return st.lists(st.one_of(st.integers(0, 10), st.sampled_from([0.5, "4", None])), max_size=6)
    if value is None:
        return st.one_of(st.none(), st.integers(-1, 100), st.floats(0, 1), st.lists(st.integers(1, 64), max_size=4))
    return yaml_values


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Key/index paths of every node below ``node`` (not ``node`` itself)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append(prefix + (key,))
        found += _paths(child, prefix + (key,))
    return found


def _parent(root: Any, path: tuple) -> Any:
    for key in path[:-1]:
        root = root[key]
    return root


@st.composite
def mutated_recipes(draw) -> dict:
    """The shipped oneshot recipe with a few random edits: drops, same-type and random-type
    replacements, unknown keys, strategy/backend switches."""
    data = copy.deepcopy(BASE_RECIPE)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "same", "same", "same", "random", "unknown", "strategy", "backend"]))
        if op == "strategy":
            data["strategy"] = {"name": draw(st.sampled_from(STRATEGIES))}
            if draw(st.booleans()):
                data["strategy"]["options"] = draw(st.one_of(st.none(), st.just({}), yaml_values))
            continue
        if op == "backend":
            data["search"] = {"backend": draw(st.sampled_from(BACKENDS)),
                              "options": draw(st.one_of(st.none(), st.just({}), yaml_values))}
            continue
        paths = _paths(data)
        if op == "unknown":
            dicts = [()] + [p for p in paths if isinstance(_parent(data, p + (None,)), dict)]
            target = _parent(data, draw(st.sampled_from(dicts)) + (None,))
            target[draw(keys)] = draw(yaml_values)
            continue
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(data, path)
        if op == "drop":
            del parent[path[-1]]
        elif op == "same":
            parent[path[-1]] = draw(_same_type_value(parent[path[-1]]))
        else:
            parent[path[-1]] = draw(yaml_values)
    if draw(st.integers(0, 9)) == 0:  # now and then, not a mapping at the top at all
        return draw(yaml_values)
    return data


def _note(what: str) -> None:
    """Count an outcome in hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


def _dump(data: Any, flow: bool, unicode: bool) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, allow_unicode=unicode)


@st.composite
def spliced_text(draw, base: str) -> str:
    """``base`` with a few random characters inserted, deleted or replaced: almost-YAML text."""
    text = base
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 6)))
        text = text[:i] + draw(st.text(max_size=4) | st.sampled_from([":", "- ", "{", "[", "]", "}", "\n", "&a ",
                                                                     "*a", "!!python/object ", "'", '"', "\t"])) \
            + text[j:]
    return text


RECIPE_TEXT = Recipe.load("oneshot").to_yaml()
recipe_texts = st.one_of(
    st.builds(_dump, mutated_recipes(), st.booleans(), st.booleans()),
    st.builds(_dump, mutated_recipes(), st.booleans(), st.booleans()),
    st.builds(_dump, yaml_values, st.booleans(), st.booleans()),
    spliced_text(RECIPE_TEXT),
    st.text(max_size=200),
)

# Texts no random draw is likely to hit: integers past Python's 4300-digit str() limit (decimal is
# refused by the parser, hex is not), deep nesting, self-referencing and exponential aliases,
# impossible dates, non-YAML tags.
SPECIAL_RECIPE_TEXTS = [
    "train: {epochs: " + "9" * 5000 + "}",
    "train: {epochs: 0x" + "f" * 5000 + "}",
    "train:\n  lr: 0x" + "f" * 5000 + "\n",
    "train: {lr: " + "9" * 400 + "}",
    "name: [0x" + "f" * 5000 + "]",
    "quant:\n  0x" + "f" * 900 + ": 1\n",
    "train: {seed: 18446744073709551616}",
    "train: {weight_decay: .nan, lr: .inf}",
    "train: {weight_decay: nan}",
    "strategy: {name: bitmixer, options: {stages: [.nan, 0.5, 0.5]}}",
    "[" * 3000,
    "a: &a [*a]\nname: *a\n",
    "x0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]\n" for i in range(1, 10)) + "name: *x9\n",
    "created: 2001-02-30\n",
    "!!python/object:os.system {}\n",
    "\ufeffname: bom\n",
    "name: \"\\ud800\"\n",
    "? [1, 2]\n: 3\n",
    "quant: {w_bits: [2, 3], depthwise_exclude: [2, 3]}",
    "graph: {input_size: [3, 0x" + "f" * 40 + ", 3]}",
]


def check_recipe_text(text: str) -> None:
    try:
        recipe = Recipe.from_yaml(text)
    except RecipeError as exc:
        assert isinstance(exc.problems, list) and exc.problems, exc
        assert all(isinstance(p, str) and p for p in exc.problems), exc.problems
        assert str(exc)
        _note("recipe: rejected")
        return
    _note("recipe: accepted")
    assert isinstance(recipe, Recipe)
    again = Recipe.from_yaml(recipe.to_yaml())
    assert again == recipe
    assert again.check() == recipe


@settings(max_examples=250 * SCALE, **SETTINGS)
@given(recipe_texts)
def test_recipe_yaml_loads_and_round_trips_or_raises_recipe_error(text):
    check_recipe_text(text)


@pytest.mark.parametrize("text", SPECIAL_RECIPE_TEXTS, ids=range(len(SPECIAL_RECIPE_TEXTS)))
def test_recipe_special_texts(text):
    check_recipe_text(text)


@settings(max_examples=40 * SCALE, **SETTINGS)
@given(st.one_of(st.binary(max_size=64), st.builds(lambda b, i: b[:i] + b"\xff\xc3" + b[i:],
                                                   st.just(RECIPE_TEXT.encode()), st.integers(0, 400))))
@example(b"\xff\xfe\x00")
@example(RECIPE_TEXT.encode())
def test_recipe_load_of_random_bytes(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_bytes(raw)
        try:
            recipe = Recipe.load(path)
        except RecipeError as exc:
            assert exc.problems and all(isinstance(p, str) for p in exc.problems)
            return
        assert Recipe.from_yaml(recipe.to_yaml()) == recipe


# -- policies ------------------------------------------------------------------------------------
def _info(name: str, kind: LayerKind, role: Role, macs: int, w_bits, a_bits, order: int) -> LayerInfo:
    return LayerInfo(name=name, kind=kind, module_type="Linear" if kind is LayerKind.LINEAR else "Conv2d",
                     macs=macs, params=8, weight_shape=(8, 1, 1, 1), in_shape=(8, 4, 4), out_shape=(8, 4, 4),
                     role=role, a_signed=True, signedness_source="graph", traced=True, w_bits=w_bits,
                     a_bits=a_bits, order=order)


SEARCH_BITS = (2, 3, 4, 5, 6)
LAYERS = (  # the layer table of tests/conftest.py's ToyNet under the default recipe
    _info("stem", LayerKind.CONV, Role.FIRST, 13824, (8,), (8,), 0),
    _info("dw", LayerKind.DEPTHWISE, Role.NORMAL, 4608, (3, 4, 5, 6), SEARCH_BITS, 1),
    _info("pw", LayerKind.CONV, Role.NORMAL, 4096, SEARCH_BITS, SEARCH_BITS, 2),
    _info("fc", LayerKind.LINEAR, Role.LAST, 80, (8,), (8,), 3),
)

layer_names = st.one_of(st.sampled_from([l.name for l in LAYERS] + ["0", "1.conv", "layer1.0.conv1", "ü.ß", "名前"]),
                        st.text(max_size=10), st.integers(-3, 3), st.integers(), st.booleans(), st.none(),
                        st.floats(allow_nan=False))
bit_values = st.one_of(st.none(), st.integers(-1, 10), st.sampled_from([16, 32, 64, 65] + HUGE_INTS), st.integers(),
                       st.booleans(), st.floats(), st.sampled_from(["4", "four", "", "8bit"]),
                       st.lists(st.integers(0, 8), max_size=3))
bit_entries = st.one_of(
    st.fixed_dictionaries({}, optional={"w": bit_values, "a": bit_values,
                                        "x": scalars}),
    st.tuples(bit_values, bit_values).map(list),
    st.lists(bit_values, max_size=3),
    scalars,
)


@st.composite
def plausible_layers(draw) -> dict:
    """Bits for (most of) the real layers, mostly allowed ones, in YAML's {w, a} or list form."""
    table = {}
    for info in LAYERS:
        if draw(st.integers(0, 19)) == 0:
            continue  # a missing layer
        w = draw(bit_values if draw(st.integers(0, 9)) == 0 else st.sampled_from(info.w_bits + (None,)))
        a = draw(bit_values if draw(st.integers(0, 9)) == 0 else st.sampled_from(info.a_bits + (None,)))
        table[info.name] = draw(st.sampled_from([{"w": w, "a": a}, [w, a], {"a": a, "w": w}]))
    if draw(st.integers(0, 5)) == 0:
        table[draw(layer_names)] = draw(bit_entries)
    return table


policy_layers = st.one_of(plausible_layers(), plausible_layers(),
                          st.dictionaries(layer_names, bit_entries, max_size=6), yaml_values)
formats = st.one_of(st.just(FORMAT), st.just(FORMAT), st.just(FORMAT),
                    st.sampled_from(["mpqfx.policy/2", "", "mpqfx.policy/1 ", "MPQFX.POLICY/1"]), scalars)


@st.composite
def policy_docs(draw) -> Any:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(yaml_values)  # not a policy at all
    doc = {}
    if draw(st.integers(0, 3)):
        doc["format"] = draw(formats)
    if draw(st.integers(0, 19)):
        doc["layers"] = draw(policy_layers)
    if draw(st.integers(0, 7)) == 0:
        doc[draw(keys)] = draw(yaml_values)
    return doc


def _json(doc: Any) -> str:
    try:
        return json.dumps(doc)
    except (TypeError, ValueError):  # a key JSON cannot hold: write the document without it
        return json.dumps(doc, skipkeys=True)


POLICY_TEXT = Policy.uniform(LAYERS, 4).to_yaml()
POLICY_JSON = Policy.uniform(LAYERS, 4).to_json()
policy_yaml_texts = st.one_of(st.builds(_dump, policy_docs(), st.booleans(), st.booleans()),
                              st.builds(_dump, policy_docs(), st.booleans(), st.booleans()),
                              spliced_text(POLICY_TEXT), st.text(max_size=100))
policy_json_texts = st.one_of(st.builds(_json, policy_docs()), st.builds(_json, policy_docs()),
                              spliced_text(POLICY_JSON), st.text(max_size=100))

SPECIAL_POLICY_TEXTS = [
    ("yaml", "layers: {a: {w: " + "9" * 5000 + "}}"),
    ("yaml", "layers: {a: {w: 0x" + "f" * 5000 + "}}"),
    ("yaml", "layers:\n  0x" + "f" * 900 + ": {w: 4, a: 4}\n"),
    ("yaml", "format: 0x" + "f" * 5000 + "\nlayers: {}\n"),
    ("yaml", "layers: {a: [0x" + "f" * 5000 + ", 4, 4]}"),
    ("yaml", "layers: {a: &x [*x, 4]}"),
    ("yaml", "layers: &l {a: *l}"),
    ("yaml", "x0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]\n" for i in range(1, 10)) + "layers: {a: *x9}\n"),
    ("yaml", "[" * 3000),
    ("yaml", "layers: {stem: {w: 8, a: 8}, when: 2001-02-30}"),
    ("yaml", "layers: {stem: {w: 0, a: 8}}"),
    ("yaml", "layers: {stem: {w: -4, a: 8}}"),
    ("yaml", "layers: {stem: {w: 8.0, a: 8}}"),
    ("yaml", "layers: {null: [4, 4], 1: [4, 4], '1': [5, 5], true: [2, 2]}"),
    ("json", '{"layers": {"a": {"w": ' + "9" * 5000 + "}}}"),
    ("json", "[" * 100000),
    ("json", '{"layers": {"a": {"w": NaN, "a": Infinity}}}'),
    ("json", '{"layers": {"a": {"w": 1e400}}}'),
    ("json", '{"layers": {"a": [4, 4]}, "layers": 3}'),
    ("json", '{"layers": {"\\ud800": [4, 4]}}'),
]


def check_policy_text(text: str, fmt: str) -> None:
    load = Policy.from_yaml if fmt == "yaml" else Policy.from_json
    try:
        policy = load(text)
    except PolicyError as exc:
        assert str(exc)
        _note(f"policy {fmt}: rejected")
        return
    _note(f"policy {fmt}: accepted")
    assert isinstance(policy, Policy)
    assert all(isinstance(name, str) for name in policy)
    assert all(b is None or (type(b) is int and 1 <= b <= 64) for bits in policy.values() for b in bits)
    assert Policy.from_yaml(policy.to_yaml()) == policy
    assert Policy.from_json(policy.to_json()) == policy
    hash(policy), repr(policy)
    check_validate(policy)


def check_validate(policy: Policy) -> None:
    try:
        assert policy.validate(LAYERS) is policy
    except PolicyError as exc:
        assert str(exc)
        _note("policy: invalid for the layer table")
        return
    _note("policy: valid for the layer table")
    assert set(policy) == {l.name for l in LAYERS}
    for info in LAYERS:
        w, a = policy[info.name]
        assert w is None or w in info.w_bits
        assert a is None or a in info.a_bits
    expected = sum(l.macs * (policy[l.name].w or 32) * (policy[l.name].a or 32) for l in LAYERS)
    assert mpqfx.bitops(LAYERS, policy).total == expected


@settings(max_examples=300 * SCALE, **SETTINGS)
@given(policy_yaml_texts)
def test_policy_yaml_loads_and_round_trips_or_raises_policy_error(text):
    check_policy_text(text, "yaml")


@settings(max_examples=200 * SCALE, **SETTINGS)
@given(policy_json_texts)
def test_policy_json_loads_and_round_trips_or_raises_policy_error(text):
    check_policy_text(text, "json")


@pytest.mark.parametrize("fmt,text", SPECIAL_POLICY_TEXTS, ids=range(len(SPECIAL_POLICY_TEXTS)))
def test_policy_special_texts(fmt, text):
    check_policy_text(text, fmt)


@settings(max_examples=100 * SCALE, **SETTINGS)
@given(st.dictionaries(layer_names, bit_entries, max_size=6) | plausible_layers())
def test_policy_constructor_accepts_or_raises_policy_error(layers):
    """``Policy(mapping)`` itself (what from_dict and Python callers use)."""
    try:
        policy = Policy(layers)
    except PolicyError:
        return
    assert Policy.from_yaml(policy.to_yaml()) == policy
    check_validate(policy)


@settings(max_examples=60 * SCALE, **SETTINGS)
@given(st.one_of(st.binary(max_size=64),
                 st.builds(lambda b, i: b[:i] + b"\x80\xfe" + b[i:], st.just(POLICY_TEXT.encode()), st.integers(0, 200)),
                 st.builds(lambda b, i: b[:i] + b"\xc3" + b[i:], st.just(POLICY_JSON.encode()), st.integers(0, 200))),
       st.sampled_from([".yaml", ".yml", ".json", ".txt"]))
@example(b"\xff\xfe\x00\x00", ".yaml")
@example(b"\xed\xa0\x80", ".json")  # an encoded surrogate: not valid UTF-8
@example(POLICY_TEXT.encode(), ".yaml")
@example(POLICY_JSON.encode(), ".json")
def test_policy_load_of_random_bytes(raw, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"p{suffix}"
        path.write_bytes(raw)
        try:
            policy = Policy.load(path)
        except PolicyError as exc:
            assert str(exc)
            return
        assert Policy.from_yaml(policy.to_yaml()) == policy
        check_validate(policy)
