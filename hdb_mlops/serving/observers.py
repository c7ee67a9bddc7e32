"""The service's observer hook: what chapter 6's monitoring plugs into without touching the
prediction path's code.

An observer is any object with an ``observe`` method (:class:`PredictionObserver`). The
prediction routes call it after each answer is computed, on the request path, so it must be
cheap (append to a buffer or a queue; do the work elsewhere). Two optional methods:
``model_changed(model)``, called when a model starts serving (at start-up and after every
``POST /admin/reload``), and ``close()``, called once at shutdown.

An observer that raises never fails a request: the error is logged (the first time and then
every 1000th) and the prediction is answered as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from hdb_mlops.serving.request_schema import RecordBase
    from hdb_mlops.serving.served import ServedModel

log = logging.getLogger(__name__)


@runtime_checkable
class PredictionObserver(Protocol):
    """Sees every prediction the service answers."""

    def observe(
        self,
        endpoint: str,
        records: Sequence[RecordBase],
        predictions: list[dict[str, Any]],
        model: ServedModel,
    ) -> None:
        """Called after ``model`` priced the validated ``records`` for ``endpoint`` (the route
        path, e.g. ``/predict``); ``predictions`` are the answer's dicts, in the same order
        (``prediction_id``, ``price``, ``interval``, ``model``). Must be cheap."""


class Observers:
    """The app's observers (``app.state.observers``) and the calls the service makes on
    them; errors in an observer are logged and counted, never raised."""

    def __init__(self, observers: Iterable[PredictionObserver] = ()):
        self.items: list[PredictionObserver] = []
        self.errors = 0
        for observer in observers:
            self.add(observer)

    def add(self, observer: PredictionObserver) -> None:
        """Add an observer (it must have an ``observe`` method)."""
        if not callable(getattr(observer, "observe", None)):
            raise TypeError(f"{observer!r} has no observe(endpoint, records, predictions, model)")
        self.items.append(observer)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def _failed(self, observer: Any, what: str) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning(
                "observer %s failed in %s (%d failures so far)",
                type(observer).__name__,
                what,
                self.errors,
                exc_info=True,
            )

    def observe(
        self,
        endpoint: str,
        records: Sequence[RecordBase],
        predictions: list[dict[str, Any]],
        model: ServedModel,
    ) -> None:
        """Call every observer's ``observe``."""
        for observer in self.items:
            try:
                observer.observe(endpoint, records, predictions, model)
            except Exception:
                self._failed(observer, "observe")

    def model_changed(self, model: ServedModel) -> None:
        """Tell every observer that ``model`` is now serving."""
        for observer in self.items:
            hook = getattr(observer, "model_changed", None)
            if hook is not None:
                try:
                    hook(model)
                except Exception:
                    self._failed(observer, "model_changed")

    def close(self) -> None:
        """Call every observer's ``close`` (at shutdown), in reverse order of addition."""
        for observer in reversed(self.items):
            hook = getattr(observer, "close", None)
            if hook is not None:
                try:
                    hook()
                except Exception:
                    self._failed(observer, "close")
