"""Command-line options from the settings dataclasses, and back.

``transformers.HfArgumentParser`` turns each dataclass field into a flag (``--max-length``, with its type,
default and choices; booleans take ``--flag`` / ``--no-flag``). bertsent adds three things around it:
the help text comes from the attribute docstrings in :mod:`bertsent.config`; a field that is itself a
settings dataclass (``data: DataConfig``) is filled from that dataclass's own flags; and when two
dataclasses of one command share a field name, the flag belongs to the later one, except the names in
:data:`SHARED`, which every dataclass of the command receives.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from functools import cache

SHARED = frozenset({"seed", "threads"})
"""Fields that mean the same in every dataclass of a command: one flag sets them all."""
SETTINGS_KEY = "_bertsent_settings"
"""Namespace attribute: which fields of which dataclass the command's flags fill."""


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under a field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, IndexError):
            continue
        for node, following in itertools.pairwise(body):
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
                value = following.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    docs[node.target.id] = " ".join(value.value.split())
    return docs


def nested_type(hint) -> type | None:
    """The settings dataclass a field holds (``DataConfig | str | None`` -> ``DataConfig``), if any."""
    candidates = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def flat_view(cls: type, skip: frozenset[str], defaults: dict) -> type:
    """A copy of ``cls`` without its nested-dataclass and ``skip`` fields, with the command's ``defaults``
    and the docstrings as help: what HfArgumentParser is given."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip or nested_type(hints[f.name]):
            continue
        default, factory = f.default, f.default_factory
        if f.name in defaults:
            default, factory = defaults[f.name], dataclasses.MISSING
        # argparse %-formats help text: a literal "99.3%" in a docstring would crash --help.
        metadata = dict(f.metadata) | {"help": docs.get(f.name, "").replace("%", "%%")}
        fields.append(
            (f.name, hints[f.name], dataclasses.field(default=default, default_factory=factory, metadata=metadata))
        )
    return dataclasses.make_dataclass(cls.__name__, fields)


def owned_fields(classes: tuple[type, ...]) -> dict[type, tuple[str, ...]]:
    """Which fields each dataclass takes from the namespace: a shared name goes to the last class that
    declares it, except :data:`SHARED` names, which go to all."""
    owner = {f.name: cls for cls in classes for f in dataclasses.fields(cls) if f.init}
    return {
        cls: tuple(f.name for f in dataclasses.fields(cls) if f.init and (owner[f.name] is cls or f.name in SHARED))
        for cls in classes
    }


def settings_parser(
    classes: tuple[type, ...], skip=frozenset(), defaults: dict | None = None
) -> argparse.ArgumentParser:
    """A parent parser (for ``add_parser(parents=[...])``) with one flag per field of ``classes``, built by
    HfArgumentParser; the command's namespace also records which dataclass owns which field."""
    from transformers import HfArgumentParser

    views = [flat_view(cls, frozenset(skip), defaults or {}) for cls in classes]
    parser = HfArgumentParser(views, add_help=False, conflict_handler="resolve")
    nargs = {
        name: f.metadata["nargs"] for v in views for name, f in v.__dataclass_fields__.items() if "nargs" in f.metadata
    }
    for action in parser._actions:
        action.nargs = nargs.get(action.dest, action.nargs)  # HfArgumentParser sets "+" for lists; "*" may be asked
        # --max-length before --max_length, an alias such as --data before the field's own --source.
        action.option_strings.sort(key=lambda s: ("_" in s, s == f"--{action.dest}"))
    parser.set_defaults(**{SETTINGS_KEY: owned_fields(classes)})
    return parser


def settings(ns: argparse.Namespace, cls: type, optional: bool = False):
    """The ``cls`` instance the command's flags describe; nested settings are built from their flags.

    ``optional``: None when the class's required fields were not given (e.g. ``--data`` left out where
    the folder's recorded data is the default).
    """
    owned = getattr(ns, SETTINGS_KEY)
    values = {name: getattr(ns, name) for name in owned[cls] if hasattr(ns, name)}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = nested_type(hints[f.name]) if f.init else None
        if inner in owned:
            values[f.name] = settings(ns, inner, optional=True)
    required = [f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING]
    if optional and any(values.get(name) is None for name in required):
        return None
    return cls(**values)
