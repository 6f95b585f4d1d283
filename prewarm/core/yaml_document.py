"""One YAML document as plain Python values, with PyYAML's safe loader's exact semantics, faster.

PyYAML builds a node object for every value and constructs each node through Python-level
dispatch: about 5 s for a targets file of 50,000 targets. Most documents use no anchors, aliases,
explicit tags, merge keys or collections as keys, and for those the values follow from libyaml's
event stream alone: this builds them directly from the events, resolving and constructing each
distinct scalar once (the same resolver and constructors as `yaml.safe_load`). A document that uses
any of those features is loaded by PyYAML's own loader, so the result, and every error, is the one
`yaml.safe_load` gives.
"""

from __future__ import annotations

from typing import Any

import yaml

# libyaml's parser when installed (the same safe subset, ~10x faster than the pure-Python one)
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Tags of the scalars built from events; any other resolved tag (merge `<<`, `=`) goes to PyYAML.
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "timestamp", "binary")
)


class _Fallback(Exception):
    """The document uses a feature the event builder leaves to PyYAML's loader."""


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader remembering the tag of each plain scalar it resolved: a large document
    repeats the same keys and values, and resolving runs a regular expression per scalar."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[str, str] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is not yaml.ScalarNode or not implicit[0]:
            return str(super().resolve(kind, value, implicit))
        tag = self._tags.get(value)
        if tag is None:
            tag = self._tags[value] = str(super().resolve(kind, value, implicit))
        return tag


def load(text: str) -> Any:
    """The one document in `text` as PyYAML's safe loader gives it (None for an empty stream).

    Raises yaml.YAMLError as that loader does, and a ConstructorError where it lets a plain
    ValueError out (a timestamp such as 2001-13-45 that matches the pattern but is no date)."""
    try:
        return _build(text)
    except _Fallback:
        try:
            return yaml.load(text, Loader=_Loader)
        except ValueError as e:
            raise yaml.constructor.ConstructorError(None, None, f"a value cannot be constructed: {e}") from e


def _build(text: str) -> Any:
    """Values straight from the event stream; raises _Fallback on what it leaves to PyYAML."""
    loader = _Loader(text)
    try:
        return _build_events(loader)
    finally:
        loader.dispose()


def _build_events(loader: _Loader) -> Any:
    scalars: dict[tuple[str, bool], Any] = {}  # (text, plain) -> its value: scalars are immutable

    def scalar(event: yaml.ScalarEvent) -> Any:
        if event.anchor is not None or event.tag is not None:
            raise _Fallback
        plain = bool(event.implicit[0])
        key = (event.value, plain)
        try:
            return scalars[key]
        except KeyError:
            pass
        tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag not in _SCALAR_TAGS:
            raise _Fallback
        node = yaml.ScalarNode(tag, event.value, None, None, event.style)  # an error falls back: no marks
        try:
            value = scalars[key] = loader.yaml_constructors[tag](loader, node)
        except Exception as e:  # PyYAML composes the whole document first: its error may be another
            raise _Fallback from e
        return value

    get, check = loader.get_event, loader.check_event
    get()  # StreamStartEvent (a parse error in the stream raises from here on, as PyYAML's loader does)
    if check(yaml.StreamEndEvent):
        return None
    get()  # DocumentStartEvent
    root: list[Any] = []
    # one frame per open collection: the collection, and for a mapping the key waiting for its value
    stack: list[tuple[Any, Any]] = [(root, None)]
    pending = _NO_KEY
    while True:
        event = get()
        kind = type(event)
        if kind is yaml.ScalarEvent:
            value = scalar(event)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            if event.anchor is not None or event.tag is not None:
                raise _Fallback
            parent = stack[-1][0]
            if type(parent) is dict and pending is _NO_KEY:
                raise _Fallback  # a collection as a key
            stack[-1] = (parent, pending)
            value = {} if kind is yaml.MappingStartEvent else []
            stack.append((value, _NO_KEY))
            pending = _NO_KEY
            continue
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            value, _ = stack.pop()
            parent, pending = stack[-1]
        elif kind is yaml.DocumentEndEvent:
            break
        else:  # AliasEvent
            raise _Fallback
        parent = stack[-1][0]
        if type(parent) is list:
            parent.append(value)
        elif pending is _NO_KEY:
            pending = value
        else:
            parent[pending] = value
            pending = _NO_KEY
    if not check(yaml.StreamEndEvent):
        raise _Fallback  # a second document: PyYAML's loader says so
    return root[0] if root else None


_NO_KEY: Any = object()  # a mapping's next scalar is a key
