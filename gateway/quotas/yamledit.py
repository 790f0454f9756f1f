"""Set numbers inside ``models.<name>.routes[i]`` of a YAML text without re-dumping it.

PyYAML's composer gives every node its character span, so a value is replaced in place and
a missing key is inserted after the route's last entry (``, key: N`` in a flow mapping, a new
line at the keys' indent in a block mapping). Comments, quoting, order and layout stay as
they were; ruamel.yaml (a round-trip dumper) would be a new dependency for the same effect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class YamlEditError(Exception):
    """The text cannot be edited safely (unexpected shape, aliases, merge keys)."""


@dataclass(frozen=True, slots=True)
class FieldEdit:
    model: str
    index: int
    field: str
    value: int


@dataclass(frozen=True, slots=True)
class _Splice:
    start: int
    end: int
    text: str


def set_route_fields(text: str, edits: Iterable[FieldEdit]) -> str:
    """``text`` with every edit applied; raises ``YamlEditError`` rather than guess."""
    edits = list(edits)
    if not edits:
        return text
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise YamlEditError(f"not valid YAML: {exc}") from None
    owners: dict[int, tuple[str, int]] = {}
    splices: list[_Splice] = []
    for edit in edits:
        route = _route_node(root, edit.model, edit.index)
        owner = owners.setdefault(id(route), (edit.model, edit.index))
        if owner != (edit.model, edit.index):
            raise YamlEditError(
                f"models.{edit.model}.routes.{edit.index} is a YAML alias of "
                f"models.{owner[0]}.routes.{owner[1]}; edit it by hand"
            )
        splices.append(_splice(text, route, edit))
    result = _apply(text, splices)
    _verify(result, edits)
    return result


def _route_node(root: Node | None, model: str, index: int) -> MappingNode:
    where = f"models.{model}.routes.{index}"
    models = _get(root, "models")
    routes = _get(_get(models, model), "routes")
    if not isinstance(routes, SequenceNode) or not 0 <= index < len(routes.value):
        raise YamlEditError(f"{where}: no such route in the file")
    route = routes.value[index]
    if not isinstance(route, MappingNode):
        raise YamlEditError(f"{where}: not a mapping")
    if any(isinstance(k, ScalarNode) and k.value == "<<" for k, _ in route.value):
        raise YamlEditError(f"{where}: uses a merge key (<<); edit it by hand")
    return route


def _get(node: Node | None, key: str) -> Node | None:
    if not isinstance(node, MappingNode):
        return None
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            found: Node = value_node
            return found
    return None


def _splice(text: str, route: MappingNode, edit: FieldEdit) -> _Splice:
    number = str(edit.value)
    current = _get(route, edit.field)
    if current is not None:
        if not isinstance(current, ScalarNode):
            raise YamlEditError(f"models.{edit.model}.routes.{edit.index}.{edit.field}: "
                                "not a scalar")  # fmt: skip
        start, end = current.start_mark.index, current.end_mark.index
        # ``tpm:`` with nothing after it: keep a space so it does not become ``tpm:400000``.
        return _Splice(start, end, number if end > start else " " + number)
    last_value = route.value[-1][1]
    if route.flow_style:
        at = last_value.end_mark.index
        return _Splice(at, at, f", {edit.field}: {number}")
    indent = " " * route.value[0][0].start_mark.column
    line_end = text.find("\n", last_value.end_mark.index)
    at = len(text) if line_end < 0 else line_end
    return _Splice(at, at, f"\n{indent}{edit.field}: {number}")


def _apply(text: str, splices: list[_Splice]) -> str:
    parts: list[str] = []
    pos = 0
    # Stable sort: several insertions at one point keep the order they were asked in.
    for splice in sorted(splices, key=lambda s: s.start):
        if splice.start < pos:
            raise YamlEditError("two edits overlap (the same value edited twice?)")
        parts += [text[pos : splice.start], splice.text]
        pos = splice.end
    parts.append(text[pos:])
    return "".join(parts)


def _verify(result: str, edits: list[FieldEdit]) -> None:
    """Read the result back: each edited field must now hold its new value."""
    try:
        data = yaml.safe_load(result)
        for edit in edits:
            if data["models"][edit.model]["routes"][edit.index][edit.field] != edit.value:
                raise YamlEditError(
                    f"models.{edit.model}.routes.{edit.index}.{edit.field} did not take the "
                    f"value {edit.value}"
                )
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise YamlEditError(f"the edited file does not read back: {exc}") from None
