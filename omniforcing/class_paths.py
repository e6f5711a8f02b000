"""Classes named by ``class_path``: one import with a one-line error, and objects that record how they were built.

Codecs, feature extractors and backbones are chosen by class path (``"package.module.Class"``), the way
LightningCLI names them in recipes, so adding one never means editing an ``isinstance`` chain or a name table
(docs/extending.md). :func:`import_class` turns a path into the class and every mistake (no such module, no
such class, not a subclass of what the caller needs) into one :class:`~omniforcing.errors.InvalidInputError`
line. :class:`RecordsInitArgs` keeps the constructor arguments of an object as ``init_args`` so it can be saved
as a ``{"class_path", "init_args"}`` record and rebuilt later without a hand-copied argument dict.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from pathlib import PurePath
from typing import Any

from omniforcing.errors import InvalidInputError

NOT_RECORDED = ("checkpoint",)
"""Constructor arguments :class:`RecordsInitArgs` leaves out: weight files whose contents are saved separately."""


def class_path_of(cls: type) -> str:
    """``"module.QualifiedName"`` of a class (what :func:`import_class` takes back)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str, base: type | tuple[type, ...], what: str) -> type:
    """The class at ``path`` (``"package.module.Class"``), which must subclass ``base``.

    Args:
        path: dotted module path and class name.
        base: the class the caller needs (e.g. ``VideoCodec``, ``FeatureExtractor``, ``nn.Module``), or a tuple
            of classes of which it must subclass one.
        what: what the class is for, used in the message (``"codec"``, ``"feature extractor"``, ...).

    Raises:
        InvalidInputError: the module cannot be imported, has no such class, or the class is not a ``base``.
    """
    module_name, _, class_name = str(path).rpartition(".")
    if not module_name or not class_name:
        raise InvalidInputError(f"{what} class path {path!r} is not of the form 'package.module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InvalidInputError(f"{what} class path {path!r}: cannot import module {module_name!r} "
                                f"({type(error).__name__}: {error})") from error
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise InvalidInputError(f"{what} class path {path!r}: module {module_name!r} has no class {class_name!r}")
    if not issubclass(cls, base):
        names = " or ".join(b.__name__ for b in (base if isinstance(base, tuple) else (base,)))
        raise InvalidInputError(f"{what} class path {path!r} is not a {names} subclass")
    return cls


def _plain(value: Any) -> Any:
    """Paths as strings and tuples as lists, so a record is what a JSON/YAML config holds."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class RecordsInitArgs:
    """Keeps the arguments an instance was constructed with as ``self.init_args`` (defaults filled in).

    The arguments of the most derived ``__init__`` that runs are recorded (before its body runs, so a
    constructor that loads a checkpoint can already compare records), without ``self`` and the
    :data:`NOT_RECORDED` weight-file arguments. A subclass may still assign ``self.init_args`` itself (e.g. to
    record a default sub-module it created); the assignment replaces the automatic record.
    """

    init_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kw: Any) -> None:
            if "init_args" not in self.__dict__:  # the outermost __init__ runs first: it names the arguments
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                record: dict[str, Any] = {}
                for name, value in list(bound.arguments.items())[1:]:
                    kind = signature.parameters[name].kind
                    if kind is inspect.Parameter.VAR_KEYWORD:
                        record.update({k: _plain(v) for k, v in value.items()})
                    elif kind is not inspect.Parameter.VAR_POSITIONAL and name not in NOT_RECORDED:
                        record[name] = _plain(value)
                self.__dict__["init_args"] = record  # bypasses nn.Module.__setattr__ (not initialised yet)
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]
