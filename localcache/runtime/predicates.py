"""Event filters for controllers (controller-runtime ``pkg/predicate``).

A predicate decides per event whether a controller enqueues anything. Predicates never change what
the cache stores. Combine with ``&``, ``|``, ``~`` or :func:`and_`, :func:`or_`, :func:`not_`.

Caveats carried over from controller-runtime: :func:`generation_changed` drops updates that only
touch status or metadata (generation bumps on spec changes when status is a subresource), and
resyncs; :func:`resource_version_changed` drops only resyncs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from localcache.runtime.selectors import LabelSelector, parse_selector

__all__ = [
    "CreateEvent",
    "DeleteEvent",
    "Funcs",
    "GenericEvent",
    "Predicate",
    "UpdateEvent",
    "and_",
    "annotations_changed",
    "generation_changed",
    "label_selector",
    "labels_changed",
    "new_predicate_funcs",
    "not_",
    "or_",
    "resource_version_changed",
]

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class CreateEvent:
    obj: Obj
    is_in_initial_list: bool = False


@dataclass(frozen=True, slots=True)
class UpdateEvent:
    old: Obj
    new: Obj

    @property
    def is_resync(self) -> bool:
        return _meta(self.old).get("resourceVersion") == _meta(self.new).get("resourceVersion")


@dataclass(frozen=True, slots=True)
class DeleteEvent:
    obj: Obj
    delete_state_unknown: bool = False


@dataclass(frozen=True, slots=True)
class GenericEvent:
    obj: Obj


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


class Predicate:
    """Passes every event; subclasses override the kinds they filter."""

    def create(self, e: CreateEvent) -> bool:
        return True

    def update(self, e: UpdateEvent) -> bool:
        return True

    def delete(self, e: DeleteEvent) -> bool:
        return True

    def generic(self, e: GenericEvent) -> bool:
        return True

    def __and__(self, other: Predicate) -> Predicate:
        return and_(self, other)

    def __or__(self, other: Predicate) -> Predicate:
        return or_(self, other)

    def __invert__(self) -> Predicate:
        return not_(self)


class Funcs(Predicate):
    """A predicate from optional per-kind callables; a missing one passes."""

    def __init__(
        self,
        create: Callable[[CreateEvent], bool] | None = None,
        update: Callable[[UpdateEvent], bool] | None = None,
        delete: Callable[[DeleteEvent], bool] | None = None,
        generic: Callable[[GenericEvent], bool] | None = None,
    ) -> None:
        self._c, self._u, self._d, self._g = create, update, delete, generic

    def create(self, e: CreateEvent) -> bool:
        return self._c(e) if self._c else True

    def update(self, e: UpdateEvent) -> bool:
        return self._u(e) if self._u else True

    def delete(self, e: DeleteEvent) -> bool:
        return self._d(e) if self._d else True

    def generic(self, e: GenericEvent) -> bool:
        return self._g(e) if self._g else True


def new_predicate_funcs(keep: Callable[[Obj], bool]) -> Predicate:
    """Apply one object filter to every kind of event (the new object for updates)."""
    return Funcs(
        create=lambda e: keep(e.obj),
        update=lambda e: keep(e.new),
        delete=lambda e: keep(e.obj),
        generic=lambda e: keep(e.obj),
    )


def resource_version_changed() -> Predicate:
    return Funcs(update=lambda e: not e.is_resync)


def generation_changed() -> Predicate:
    return Funcs(update=lambda e: _meta(e.old).get("generation") != _meta(e.new).get("generation"))


def labels_changed() -> Predicate:
    return Funcs(update=lambda e: (_meta(e.old).get("labels") or {}) != (_meta(e.new).get("labels") or {}))


def annotations_changed() -> Predicate:
    return Funcs(
        update=lambda e: (_meta(e.old).get("annotations") or {}) != (_meta(e.new).get("annotations") or {})
    )


def label_selector(selector: str | Mapping[str, Any] | LabelSelector) -> Predicate:
    """Only objects whose labels match (the new object for updates)."""
    sel = parse_selector(selector)
    return new_predicate_funcs(sel.matches_object)


class _And(Predicate):
    def __init__(self, preds: tuple[Predicate, ...]) -> None:
        self.preds = preds

    def create(self, e: CreateEvent) -> bool:
        return all(p.create(e) for p in self.preds)

    def update(self, e: UpdateEvent) -> bool:
        return all(p.update(e) for p in self.preds)

    def delete(self, e: DeleteEvent) -> bool:
        return all(p.delete(e) for p in self.preds)

    def generic(self, e: GenericEvent) -> bool:
        return all(p.generic(e) for p in self.preds)


class _Or(_And):
    def create(self, e: CreateEvent) -> bool:
        return any(p.create(e) for p in self.preds)

    def update(self, e: UpdateEvent) -> bool:
        return any(p.update(e) for p in self.preds)

    def delete(self, e: DeleteEvent) -> bool:
        return any(p.delete(e) for p in self.preds)

    def generic(self, e: GenericEvent) -> bool:
        return any(p.generic(e) for p in self.preds)


class _Not(Predicate):
    def __init__(self, pred: Predicate) -> None:
        self.pred = pred

    def create(self, e: CreateEvent) -> bool:
        return not self.pred.create(e)

    def update(self, e: UpdateEvent) -> bool:
        return not self.pred.update(e)

    def delete(self, e: DeleteEvent) -> bool:
        return not self.pred.delete(e)

    def generic(self, e: GenericEvent) -> bool:
        return not self.pred.generic(e)


def and_(*preds: Predicate) -> Predicate:
    return _And(preds)


def or_(*preds: Predicate) -> Predicate:
    return _Or(preds)


def not_(pred: Predicate) -> Predicate:
    return _Not(pred)
