"""Command-line options from the settings dataclasses, and back.

``transformers.HfArgumentParser`` turns each dataclass field into a flag (``--max-length``, with its type,
default and choices; booleans take ``--flag`` / ``--no-flag``). bertsent adds around it: the help text
from the attribute docstrings in :mod:`bertsent.config`; a field that is itself a settings dataclass
(``data: DataConfig``) filled from that dataclass's own flags; old flag names kept as deprecated aliases
(field metadata ``deprecated``, a warning the first time one is used); and one meaning per flag: two
dataclasses of one command may declare the same field only when it is in :data:`SHARED` (one flag sets it
in both), or when the command skips one of them (``skip={"CompareConfig.batch_size"}``); any other
clash is an error when the parser is built.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import logging
import types
import typing
from functools import cache

log = logging.getLogger(__name__)

SHARED = frozenset({"seed", "threads", "train_samples", "validation_samples"})
"""Fields that mean the same in every settings dataclass that declares them, so one flag sets them all: the
seed, the CPU threads, and the training and validation reviews used (a stage's count of validation reviews is
the data's)."""
SETTINGS_KEY = "_bertsent_settings"
"""Namespace attribute: which fields of which dataclass the command's flags fill."""


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under a field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        docs |= _module_docs(klass.__module__).get(klass.__qualname__, {})
    return docs


@cache
def _module_docs(module: str) -> dict[str, dict[str, str]]:
    """Every top-level class's attribute docstrings in ``module``, from one parse of its source (a parse per
    class through ``inspect.getsource`` cost most of a second of every command's start-up)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(spec.loader.get_source(module))
    except (AttributeError, ImportError, OSError, SyntaxError, TypeError, ValueError):
        return {}
    found: dict[str, dict[str, str]] = {}
    for klass in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        docs = found.setdefault(klass.name, {})
        for node, following in itertools.pairwise(klass.body):
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
                value = following.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    docs[node.target.id] = " ".join(value.value.split())
    return found


def nested_type(hint) -> type | None:
    """The settings dataclass a field holds (``DataConfig | str | None`` -> ``DataConfig``), if any."""
    candidates = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


class SettingsClash(TypeError):
    """Two settings dataclasses of one command declare the same field without sharing its meaning: a bug in
    the command table, raised when the parser is built."""


def skipped(cls: type, name: str, skip: frozenset[str]) -> bool:
    """Whether the command leaves ``cls.name`` without a flag: ``skip`` holds ``name`` (every class) or
    ``ClassName.name`` (that class only)."""
    return name in skip or f"{cls.__name__}.{name}" in skip


def flag_fields(cls: type, skip: frozenset[str] = frozenset()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that get a flag: init fields that are not nested settings nor skipped."""
    hints = typing.get_type_hints(cls)
    return [
        f
        for f in dataclasses.fields(cls)
        if f.init and not nested_type(hints[f.name]) and not skipped(cls, f.name, skip)
    ]


def flat_view(cls: type, skip: frozenset[str], defaults: dict) -> type:
    """A copy of ``cls`` without its nested-dataclass and ``skip`` fields, with the command's ``defaults``
    and the docstrings as help: what HfArgumentParser is given."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields = []
    for f in flag_fields(cls, skip):
        default, factory = f.default, f.default_factory
        if f.name in defaults:
            default, factory = defaults[f.name], dataclasses.MISSING
        # argparse %-formats help text: a literal "99.3%" in a docstring would crash --help.
        metadata = {k: v for k, v in f.metadata.items() if k != "deprecated"}
        metadata["help"] = docs.get(f.name, "").replace("%", "%%")
        fields.append(
            (f.name, hints[f.name], dataclasses.field(default=default, default_factory=factory, metadata=metadata))
        )
    return dataclasses.make_dataclass(cls.__name__, fields)


def owned_fields(classes: tuple[type, ...], skip: frozenset[str] = frozenset()) -> dict[type, tuple[str, ...]]:
    """Which fields each dataclass takes from the namespace: its flag fields. Raises :class:`SettingsClash`
    when two classes declare a flag field that is not in :data:`SHARED`."""
    declared: dict[str, list[str]] = {}
    for cls in classes:
        for f in flag_fields(cls, skip):
            declared.setdefault(f.name, []).append(cls.__name__)
    if clashes := {name: owners for name, owners in declared.items() if len(owners) > 1 and name not in SHARED}:
        detail = "; ".join(f"{name!r} in {' and '.join(owners)}" for name, owners in clashes.items())
        raise SettingsClash(f"one flag, two meanings: {detail} (rename one, skip one, or declare it SHARED)")
    # A field skipped command-wide may still come from the namespace (a positional the command adds itself).
    wide = frozenset(name for name in skip if "." not in name)
    return {cls: tuple(f.name for f in flag_fields(cls, skip - wide)) for cls in classes}


_warned: set[str] = set()


class DeprecatedAlias(argparse.Action):
    """An old flag name: stores into the new field's ``dest`` and warns, once per process, that it is renamed."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string not in _warned:
            _warned.add(option_string)
            log.warning("%s is deprecated: use %s", option_string, self.new)
        setattr(namespace, self.dest, values)


def add_deprecated_aliases(parser: argparse.ArgumentParser, classes: tuple[type, ...], skip: frozenset[str]) -> None:
    """Each flag field's ``deprecated`` names as hidden flags of the same type, storing into the field."""
    actions = {action.dest: action for action in parser._actions}
    for cls in classes:
        for f in flag_fields(cls, skip):
            if old := f.metadata.get("deprecated"):
                new = actions[f.name]
                parser.add_argument(
                    *old,
                    *(name.replace("-", "_").replace("__", "--", 1) for name in old),
                    dest=f.name,
                    type=new.type,
                    nargs=new.nargs,
                    action=DeprecatedAlias,
                    new=new.option_strings[0],
                    help=argparse.SUPPRESS,
                )


def settings_parser(
    classes: tuple[type, ...], skip=frozenset(), defaults: dict | None = None
) -> argparse.ArgumentParser:
    """A parent parser (for ``add_parser(parents=[...])``) with one flag per field of ``classes``, built by
    HfArgumentParser; the command's namespace also records which dataclass owns which field."""
    from transformers import HfArgumentParser

    skip = frozenset(skip)
    owned = owned_fields(classes, skip)  # raises on a clash before any flag is made
    views = [flat_view(cls, skip, defaults or {}) for cls in classes]
    parser = HfArgumentParser(views, add_help=False, conflict_handler="resolve")
    nargs = {
        name: f.metadata["nargs"] for v in views for name, f in v.__dataclass_fields__.items() if "nargs" in f.metadata
    }
    for action in parser._actions:
        action.nargs = nargs.get(action.dest, action.nargs)  # HfArgumentParser sets "+" for lists; "*" may be asked
        # --max-length before --max_length, an alias such as --data before the field's own --source.
        action.option_strings.sort(key=lambda s: ("_" in s, s == f"--{action.dest}"))
    add_deprecated_aliases(parser, classes, skip)
    parser.set_defaults(**{SETTINGS_KEY: owned})
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
