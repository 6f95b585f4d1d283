"""The YAML document loader gives exactly what PyYAML's safe loader gives: values and errors."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from prewarm.core import yaml_document

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, as the project loads YAML


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SAFE_LOADER)


def outcome(load: Any, text: str) -> tuple[str, Any]:
    """What loading `text` gives: ("value", value) or ("error", type and message)."""
    try:
        return ("value", load(text))
    except yaml.YAMLError as e:
        return ("error", (type(e).__name__, str(e)))


DOCUMENTS = [
    "",
    "# only a comment\n",
    "targets: []\n",
    "targets:\n  - {name: a/b, kind: keda, max: 4, hold: 0s}\n  - name: c/d\n    kind: knative\n",
    "a: 1\nb: 1.5\nc: true\nd: ~\ne: null\nf:\ng: yes\nh: off\ni: 0x1F\nj: 0o17\nk: 012\nl: 1_000\n",
    "a: .inf\nb: -.Inf\nc: .nan\nd: 6.8523015e+5\ne: 190:20:30\nf: 1e3\n",
    "a: '1'\nb: \"true\"\nc: 'null'\nd: |\n  block\n  text\ne: >\n  folded\n  text\n",
    "when: 2001-12-14t21:59:43.10-05:00\nday: 2002-12-14\n",
    "blob: !!binary aGVsbG8=\n",
    "a: !!str 1\nb: !!int '7'\n",
    "base: &base {max: 4, hold: 0s}\none: *base\n",
    "base: &base {max: 4}\nderived:\n  <<: *base\n  hold: 5m\n",
    "? [1, 2]\n: pair\n",
    "? {a: 1}\n: mapping key\n",
    "a: 1\na: 2\n",
    "set: !!set {a, b}\n",
    "odd: !!python/object:os.system {}\n",
    "first: 1\n---\nsecond: 2\n",
    "a: [1, 2\n",
    "a: b: c\n",
    "- - - deep\n    - x\n  - y\n- {k: [1, {m: n}]}\n",
    "'quoted key': 1\n\"1\": 2\n1: 3\ntrue: 4\n~: 5\n",
    "unicode: \u00e9\u00e8 \U0001f680\n",
    "equal: =\n",
    "a: 1\n...\n",
    "--- plain scalar document\n",
    "- !custom thing\n",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_same_values_and_errors_as_safe_load(text: str) -> None:
    assert outcome(yaml_document.load, text) == outcome(safe_load, text)


def test_a_scalar_that_only_looks_like_a_date_is_a_yaml_error() -> None:
    # PyYAML's loader lets a ValueError out here, which a caller catching YAMLError would miss
    with pytest.raises(yaml.YAMLError, match=r"month must be in 1\.\.12"):
        yaml_document.load("when: 2001-12-14\nbad: 2001-13-45\n")


def test_plain_documents_are_built_from_events_without_pyyaml_nodes() -> None:
    # the point of the module: documents without anchors, tags or merges never reach the loader's
    # node construction (so the fast path is what is measured and tested above)
    text = "targets:\n" + "".join(f"  - {{name: ns/m-{i}, kind: keda, max: {i % 5}}}\n" for i in range(50))
    assert yaml_document._build(text) == safe_load(text)
    fallbacks = ("a: &x 1\nb: *x\n", "a: !!str 1\n", "b: {a: 1}\nc:\n  <<: {d: 2}\n", "? [1]\n: 2\n", "a\n---\nb\n")
    for fallback in fallbacks:
        with pytest.raises(yaml_document._Fallback):
            yaml_document._build(fallback)


def test_equal_scalars_share_one_value_yet_mappings_stay_apart() -> None:
    document = yaml_document.load("- {a: 1, when: 2001-12-14}\n- {a: 1, when: 2001-12-14}\n")
    assert document[0] == document[1] and document[0] is not document[1]
    document[0]["a"] = 2
    assert document[1] == {"a": 1, "when": safe_load("2001-12-14")}


SCALARS = st.sampled_from(
    ["1", "1.0", "-2", "0x10", "0o7", "010", "true", "no", "On", "~", "null", "", "'q'", '"d"', "a b", ".5", "1e5",
     "2001-12-14", "2001-12-14 21:59:43", "12:30", "=", "<<", "x: y", "[a]", "{b: 1}", "'it''s'", "é"]
)  # fmt: skip


@st.composite
def documents(draw: st.DrawFn, depth: int = 0) -> str:
    """Small YAML texts in flow style, valid or not."""
    if depth >= 3 or draw(st.booleans()):
        return draw(SCALARS)
    items = draw(st.lists(st.deferred(lambda: documents(depth + 1)), max_size=4))
    if draw(st.booleans()):
        return "[" + ", ".join(items) + "]"
    keys = draw(st.lists(SCALARS, min_size=len(items), max_size=len(items)))
    return "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, items, strict=True)) + "}"


@settings(max_examples=400, deadline=None)
@given(documents())
def test_any_flow_document_loads_as_safe_load_does(text: str) -> None:
    assert outcome(yaml_document.load, text) == outcome(safe_load, text)
