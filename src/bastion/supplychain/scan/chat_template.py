"""Template-injection checks for Jinja chat templates (GGUF `tokenizer.chat_template`,
tokenizer configs).

Chat templates are rendered by the inference server with every prompt. Rendered outside a
sandbox, and in sandboxes with gaps, a template that reaches Python internals (`__class__`,
`__globals__`, `__subclasses__`, a Jinja global's function object) runs arbitrary code on
the server. The template is only parsed here, never rendered: the checks walk the syntax
tree for the constructs such payloads need, including names assembled from pieces at render
time. Benign templates (loops over messages, `raise_exception`, `namespace`) use none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser

from bastion.findings import Severity

# Attribute names through which Python objects reach code, frames and modules (besides any
# name starting with "__", which covers dunders and name-mangled privates).
_INTERNAL_ATTRIBUTES = frozenset(
    """mro func_globals func_code func_closure func_defaults im_func im_self im_class
    gi_frame gi_code gi_yieldfrom cr_frame cr_code cr_await ag_frame ag_code ag_await
    f_globals f_locals f_builtins f_back f_code tb_frame tb_next co_code""".split()
)
# Jinja's global callables: calling them is normal, inspecting the function object is not.
_GLOBAL_CALLABLES = frozenset("cycler joiner namespace lipsum range dict".split())
# Names that only exist in web frameworks or expose the template runtime itself.
_RUNTIME_NAMES = frozenset("self config request session url_for get_flashed_messages".split())
# Filters that read attributes named by their arguments.
_ATTRIBUTE_FILTERS = frozenset(
    "attr map select reject selectattr rejectattr sort groupby sum unique min max".split()
)
_STRING_FILTERS = frozenset("join format replace lower upper reverse string trim title".split())
_DUNDER = re.compile(r"__\w+__")
# `_Class__attr`: a class's private attribute from outside (the template runtime's context).
_NAME_MANGLED = re.compile(r"_[A-Za-z]\w*?__\w")
_CHAR_CODE_FORMAT = re.compile(r"%[-#0 +]*\d*c|\{[^{}]*:[^{}]*c\}")
_MAX_FOLDED = 4096  # longest string assembled while folding constants
_MAX_FOLD_DEPTH = 64


@dataclass(frozen=True)
class Construct:
    """One suspicious construct: what it is, where, and how severe."""

    severity: Severity
    description: str
    line: int | None


class TemplateUnparseable(ValueError):
    """The template does not parse, so it cannot be checked."""


class _GenerationTag(Extension):
    """Parses the `{% generation %}` block that Hugging Face templates use to mark the
    assistant's tokens, so such templates can be checked like any other."""

    tags = frozenset({"generation"})

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def parse(source: str) -> nodes.Template:
    """The syntax tree of a template, with the extensions chat templates use enabled."""
    env = jinja2.Environment(
        extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do", _GenerationTag]
    )
    try:
        return env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateUnparseable(f"line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise TemplateUnparseable("template nests too deeply to parse") from None


def _walk(root: nodes.Node) -> Iterator[tuple[nodes.Node, nodes.Node | None]]:
    """Every node with its parent, without recursion (hostile templates nest deeply)."""
    stack: list[tuple[nodes.Node, nodes.Node | None]] = [(root, None)]
    while stack:
        node, parent = stack.pop()
        yield node, parent
        stack.extend((child, node) for child in node.iter_child_nodes())


def _is_internal(name: str) -> bool:
    return (
        name.startswith("__") or name in _INTERNAL_ATTRIBUTES or bool(_NAME_MANGLED.match(name))
    )


def _internal_part(path: str) -> str | None:
    """The internal attribute in a dotted attribute path (`a.__class__`), if any."""
    return next((part for part in path.split(".") if _is_internal(part)), None)


def fold(node: nodes.Node, depth: int = 0) -> str | None:
    """The string a constant expression evaluates to, computed without evaluating anything
    from the template: only literals, `~`, `+`, repetition and pure string filters."""
    if depth > _MAX_FOLD_DEPTH:
        return None
    if isinstance(node, nodes.Const):
        value = node.value
        return value if isinstance(value, str) else None
    if isinstance(node, nodes.Concat):
        parts = [_fold_any(child, depth + 1) for child in node.nodes]
        return None if any(p is None for p in parts) else _bounded("".join(parts))
    if isinstance(node, nodes.Add):
        left, right = fold(node.left, depth + 1), fold(node.right, depth + 1)
        return None if left is None or right is None else _bounded(left + right)
    if isinstance(node, nodes.Mul):
        return _fold_repeat(node, depth)
    if isinstance(node, nodes.Filter) and node.node is not None:
        return _fold_filter(node, depth)
    return None


def _fold_any(node: nodes.Node, depth: int) -> str | None:
    """`~` converts its operands to strings, so integer literals join in too."""
    if isinstance(node, nodes.Const) and isinstance(node.value, int):
        return str(node.value)
    return fold(node, depth)


def _bounded(text: str) -> str | None:
    return text if len(text) <= _MAX_FOLDED else None


def _fold_repeat(node: nodes.Mul, depth: int) -> str | None:
    for text_node, count_node in ((node.left, node.right), (node.right, node.left)):
        text = fold(text_node, depth + 1)
        if text is not None and isinstance(count_node, nodes.Const):
            count = count_node.value
            if isinstance(count, int) and count >= 0 and len(text) * count <= _MAX_FOLDED:
                return text * count
    return None


def _fold_filter(node: nodes.Filter, depth: int) -> str | None:
    if node.name == "join" and isinstance(node.node, (nodes.List, nodes.Tuple)):
        items = [fold(item, depth + 1) for item in node.node.items]
        separator = fold(node.args[0], depth + 1) if node.args else ""
        if separator is None or any(item is None for item in items):
            return None
        return _bounded(separator.join(items))
    text = fold(node.node, depth + 1)
    if text is None:
        return None
    simple = {"lower": str.lower, "upper": str.upper, "string": str, "trim": str.strip}
    if node.name in simple and not node.args:
        return simple[node.name](text)
    if node.name == "reverse":
        return text[::-1]
    if node.name == "replace" and len(node.args) == 2:
        old, new = fold(node.args[0], depth + 1), fold(node.args[1], depth + 1)
        if old and new is not None:
            return _bounded(text.replace(old, new))
    return None


def _fragments(node: nodes.Node) -> list[str]:
    """The literal pieces of a string-building expression that cannot be folded whole."""
    found = []
    for child, _ in _walk(node):
        if isinstance(child, nodes.Const) and isinstance(child.value, str):
            found.append(child.value)
    return found


def _builds_strings(node: nodes.Node) -> bool:
    if isinstance(node, (nodes.Concat, nodes.Add, nodes.Mul, nodes.Mod)):
        return True
    return isinstance(node, nodes.Filter) and node.name in _STRING_FILTERS


def _format_string(node: nodes.Node) -> nodes.Node | None:
    """The operand used as a format string by `%`, `|format` and `.format`."""
    if isinstance(node, nodes.Mod):
        return node.left
    if isinstance(node, nodes.Filter) and node.name == "format":
        return node.node
    if isinstance(node, nodes.Getattr) and node.attr == "format":
        return node.node
    return None


class _Checker:
    def __init__(self) -> None:
        self.found: list[Construct] = []
        self.stored: set[str] = set()

    def add(self, severity: Severity, description: str, node: nodes.Node) -> None:
        self.found.append(Construct(severity, description, getattr(node, "lineno", None)))

    def check(self, template: nodes.Template) -> list[Construct]:
        # Names the template assigns itself (loop variables, sets, macros, parameters) are
        # its own, whatever they are called.
        for node, _ in _walk(template):
            assigned = isinstance(node, nodes.Name) and node.ctx != "load"
            if assigned or isinstance(node, nodes.Macro):
                self.stored.add(node.name)
        for node, parent in _walk(template):
            self._visit(node, parent)
        return self.found

    def _visit(self, node: nodes.Node, parent: nodes.Node | None) -> None:
        if isinstance(node, nodes.Getattr):
            self._attribute_name(node.attr, node, "attribute access")
        elif isinstance(node, nodes.Getitem):
            self._subscript(node)
        elif isinstance(node, (nodes.Filter, nodes.Test)):
            self._filter(node)
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            self._name(node, parent)
        elif isinstance(node, (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends)):
            self.add(Severity.HIGH, f"{type(node).__name__.lower()} loads another template", node)
        elif isinstance(node, nodes.Const) and isinstance(node.value, str):
            self._literal(node, parent)
        if _builds_strings(node) and not (parent is not None and _builds_strings(parent)):
            self._built_string(node)
        self._char_codes(node)

    def _attribute_name(self, name: str, node: nodes.Node, how: str) -> None:
        if _is_internal(name):
            self.add(Severity.CRITICAL, f"{how} to Python internal {name!r}", node)
        elif name.startswith("_"):
            self.add(Severity.HIGH, f"{how} to private attribute {name!r}", node)

    def _subscript(self, node: nodes.Getitem) -> None:
        name = fold(node.arg)
        if name is not None:
            self._attribute_name(name, node, "item access")
        elif _builds_strings(node.arg):
            self.add(Severity.HIGH, "item access with a name assembled at render time", node)

    def _filter(self, node: nodes.Filter | nodes.Test) -> None:
        arguments = [*node.args, *(kw.value for kw in node.kwargs)]
        if node.name == "attr":
            name = fold(arguments[0]) if arguments else None
            if name is None:
                self.add(Severity.HIGH, "|attr with a name computed at render time", node)
            else:
                self._attribute_name(name, node, "|attr")
            return
        if node.name not in _ATTRIBUTE_FILTERS:
            return
        for argument in arguments:
            path = fold(argument)
            internal = _internal_part(path) if path is not None else None
            if internal is not None:
                self.add(Severity.CRITICAL, f"|{node.name} reads Python internal {internal!r}",
                         node)

    def _name(self, node: nodes.Name, parent: nodes.Node | None) -> None:
        if node.name in self.stored:
            return
        if node.name in _RUNTIME_NAMES:
            self.add(Severity.HIGH, f"reference to runtime object {node.name!r}", node)
        elif node.name in _GLOBAL_CALLABLES and not (
            isinstance(parent, nodes.Call) and parent.node is node
        ):
            self.add(Severity.HIGH, f"inspects the Jinja global {node.name!r} instead of "
                     "calling it", node)

    def _literal(self, node: nodes.Const, parent: nodes.Node | None) -> None:
        """A dunder name in a literal is suspicious wherever it is; where the literal names an
        attribute to read, the access check has already reported it as critical."""
        if isinstance(parent, (nodes.Getitem, nodes.Keyword)) or (
            isinstance(parent, (nodes.Filter, nodes.Test))
            and parent.name in _ATTRIBUTE_FILTERS
        ):
            return
        match = _DUNDER.search(node.value)
        if match:
            self.add(Severity.HIGH, f"string literal names Python internal {match.group()!r}",
                     node)

    def _built_string(self, node: nodes.Node) -> None:
        text, pieces = fold(node), _fragments(node)
        match = _DUNDER.search(text) if text is not None else None
        if match:
            self.add(Severity.CRITICAL,
                     f"assembles the Python internal name {match.group()!r} from pieces", node)
        elif text is not None and "__" in text and not any("__" in p for p in pieces):
            self.add(Severity.HIGH, "assembles a double underscore from single ones", node)
        elif text is None and any("__" in p or (p and set(p) == {"_"}) for p in pieces):
            self.add(Severity.HIGH, "assembles a name from underscores at render time", node)

    def _char_codes(self, node: nodes.Node) -> None:
        format_string = _format_string(node)
        template = fold(format_string) if format_string is not None else None
        if template is not None and _CHAR_CODE_FORMAT.search(template):
            self.add(Severity.HIGH, "formats characters from numeric codes", node)


def check(source: str) -> list[Construct]:
    """Suspicious constructs in a chat template; raises TemplateUnparseable."""
    return _Checker().check(parse(source))
