"""A small document model shared by model cards and datasheets, rendered to Markdown and to
self-contained HTML with jinja2 (HTML autoescaped, so nothing from a YAML file, a report or
the ledger can inject markup).

A document is sections of blocks: fields (label: value), text, lists and tables. A value
that nobody provided is never filled in: the block carries a prompt saying what to add and
where, and both renderers show it as an explicit "Not provided" line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import jinja2
import markupsafe
import yaml

NOT_PROVIDED = "Not provided"


@dataclass(frozen=True)
class Fields:
    rows: list[tuple[str, str | None, str]]  # (label, value or None, prompt)
    kind: str = "fields"


@dataclass(frozen=True)
class Text:
    text: str | None
    prompt: str = ""
    kind: str = "text"


@dataclass(frozen=True)
class Items:
    items: list[str]
    prompt: str = ""
    kind: str = "items"


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    empty: str  # said instead of an empty table
    kind: str = "table"


Block = Fields | Text | Items | Table


@dataclass
class Section:
    title: str
    blocks: list[Block]
    sources: str = ""  # where the content comes from (ledger, results, YAML ...)
    level: int = 2


@dataclass
class Document:
    title: str
    summary: str
    sections: list[Section]
    front_matter: dict[str, Any] = field(default_factory=dict)


def _md_cell(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def _term(label: str) -> str:
    """A field label as a lead-in: "Name:", but a question keeps its own mark."""
    return label if label.endswith("?") else label + ":"


def _md_text(value: object) -> str:
    return str(value).strip()


# trim_blocks + lstrip_blocks: lines holding only a tag vanish, so the text is as written.
MARKDOWN = """\
{% macro ask(prompt) %}_{{ missing }}: {{ prompt }}_{% endmacro %}
{% if doc.front_matter %}
---
{{ front_matter }}---

{% endif %}
# {{ doc.title }}

{{ doc.summary }}
{% for section in doc.sections %}

{{ "#" * section.level }} {{ section.title }}
{% if section.sources %}

_Source: {{ section.sources }}_
{% endif %}
{% for block in section.blocks %}

{% if block.kind == "fields" %}
{% for label, value, prompt in block.rows %}
- **{{ label | term }}** {{ value | text if value else ask(prompt) }}
{% endfor %}
{% elif block.kind == "text" %}
{{ block.text | text if block.text else ask(block.prompt) }}
{% elif block.kind == "items" %}
{% for item in block.items %}
- {{ item | text }}
{% else %}
{{ ask(block.prompt) }}
{% endfor %}
{% elif block.rows %}
| {{ block.header | map("cell") | join(" | ") }} |
|{{ " --- |" * block.header | length }}
{% for row in block.rows %}
| {{ row | map("cell") | join(" | ") }} |
{% endfor %}
{% else %}
_{{ block.empty }}_
{% endif %}
{% endfor %}
{% endfor %}
"""

HTML = """\
{%- macro ask(prompt) -%}
<span class="missing">{{ missing }}: {{ prompt | inline }}</span>
{%- endmacro -%}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ doc.title }}</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1b1f24; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; width: 100%; }
th, td { border: 1px solid #d0d7de; padding: .3rem .5rem; text-align: left;
         vertical-align: top; overflow-wrap: anywhere; }
th { background: #f6f8fa; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
.missing { color: #9a6700; background: #fff8c5; padding: 0 .3rem; font-style: italic; }
.source { color: #57606a; font-size: .9em; }
.text { white-space: pre-wrap; }
</style>
</head>
<body>
<h1>{{ doc.title }}</h1>
<p>{{ doc.summary | inline }}</p>
{%- for section in doc.sections %}
<section>
<h{{ section.level }}>{{ section.title }}</h{{ section.level }}>
{%- if section.sources %}
<p class="source">Source: {{ section.sources | inline }}</p>
{%- endif %}
{%- for block in section.blocks %}
{%- if block.kind == "fields" %}
<dl>
{%- for label, value, prompt in block.rows %}
<dt>{{ label }}</dt><dd>{{ value if value else ask(prompt) }}</dd>
{%- endfor %}
</dl>
{%- elif block.kind == "text" %}
{%- if block.text %}
<p class="text">{{ block.text | inline }}</p>
{%- else %}
<p>{{ ask(block.prompt) }}</p>
{%- endif %}
{%- elif block.kind == "items" %}
{%- if block.items %}
<ul>
{%- for item in block.items %}
<li>{{ item }}</li>
{%- endfor %}
</ul>
{%- else %}
<p>{{ ask(block.prompt) }}</p>
{%- endif %}
{%- elif block.kind == "table" %}
{%- if block.rows %}
<table>
<tr>{% for h in block.header %}<th>{{ h }}</th>{% endfor %}</tr>
{%- for row in block.rows %}
<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{%- endfor %}
</table>
{%- else %}
<p><em>{{ block.empty | inline }}</em></p>
{%- endif %}
{%- endif %}
{%- endfor %}
</section>
{%- endfor %}
</body>
</html>
"""


_BACKTICKS = re.compile(r"`([^`]+)`")


def _html_inline(value: object) -> markupsafe.Markup:
    """Escaped text with `code` spans as <code>: prompts and sources quote commands."""
    escaped = str(markupsafe.escape(value))
    return markupsafe.Markup(_BACKTICKS.sub(r"<code>\1</code>", escaped))


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=not autoescape,
        lstrip_blocks=not autoescape,
    )
    env.filters["cell"] = _md_cell
    env.filters["text"] = _md_text
    env.filters["term"] = _term
    env.filters["inline"] = _html_inline
    return env


_MARKDOWN = _environment(autoescape=False).from_string(MARKDOWN)
_HTML = _environment(autoescape=True).from_string(HTML)


def render_markdown(doc: Document) -> str:
    front = (
        yaml.safe_dump(doc.front_matter, sort_keys=False, allow_unicode=True)
        if doc.front_matter else ""
    )
    return _MARKDOWN.render(doc=doc, front_matter=front, missing=NOT_PROVIDED)


def render_html(doc: Document) -> str:
    return _HTML.render(doc=doc, missing=NOT_PROVIDED)


RENDERERS = {"md": render_markdown, "html": render_html}
