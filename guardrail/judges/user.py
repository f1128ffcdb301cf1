"""A judge written by the user: ``type: python``, named by import path (``pkg.mod:Name``).

The interface (README, "python judges"): ``Name`` is a class or factory
called with the policy's ``settings`` as keyword arguments; what it returns
has a ``screen(text)`` method, plain or ``async``, that returns ``True`` (a
flag in the judge's first category), ``False`` (a pass) or a ``Verdict`` (its
``flagged``, ``categories``, ``score`` and ``reason`` are kept). It may have
``aclose()`` or ``close()``, called when the guard shuts down.

A plain ``screen`` runs in this judge's own bounded thread pool, never on the
event loop; an ``async`` one runs on the loop and must not block it. Whatever
it raises is ``JudgeError("internal")`` (logged with its type, never its
message, which may quote user text); an answer of another type is
``JudgeError("parse")``. Categories it names outside the policy's are ``other``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from guardrail.judges.base import JudgeError, Verdict
from guardrail.judges.categories import known_as

log = logging.getLogger("guardrail")


def load_target(path: str) -> Any:
    """The object ``module.path:attribute.path`` names; ``ValueError`` saying what is wrong."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{path!r} is not an import path like 'package.module:JudgeClass'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # a user module may fail to import in any way
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{path!r} is not a class or a function that makes a judge")
    return target


def check_target(path: str, settings: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless ``path`` names a judge maker that takes ``settings``."""
    target = load_target(path)
    if inspect.isclass(target) and not callable(getattr(target, "screen", None)):
        raise ValueError(f"{path!r} has no screen(text) method")
    try:
        inspect.signature(target).bind(**settings)
    except TypeError as exc:
        raise ValueError(f"{path!r} does not take these settings: {exc}") from None
    except ValueError:
        pass  # a builtin without a signature: it is called and checked at build


class PythonJudge:
    """Runs a user's judge object behind the judge interface."""

    inline = False

    def __init__(
        self,
        name: str,
        *,
        path: str,
        settings: Mapping[str, Any],
        categories: Sequence[str],
        max_workers: int = 4,
    ) -> None:
        """Build the user's judge; ``ValueError`` if it cannot be built or has no ``screen``."""
        target = load_target(path)
        try:
            self._judge = target(**settings)
        except Exception as exc:
            msg = f"{path}({', '.join(settings)}) raised {type(exc).__name__}: {exc}"
            raise ValueError(msg) from None
        screen = getattr(self._judge, "screen", None)
        if not callable(screen):
            raise ValueError(f"{path} made a {type(self._judge).__name__}, which has no screen()")
        self._screen = screen
        self._async = inspect.iscoroutinefunction(screen)
        self._name = name
        self._categories = tuple(categories)
        # Its own pool: a slow user judge cannot starve the app's to_thread work.
        self._pool = (
            None
            if self._async
            else ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"judge-{name}")
        )

    @property
    def name(self) -> str:
        """The judge's name from the policy; a metric label."""
        return self._name

    async def screen(self, text: str) -> Verdict:
        """The user's judge on ``text``; its failures are ``JudgeError``."""
        started = time.perf_counter()
        try:
            if self._pool is None:
                answer = await self._screen(text)
            else:
                loop = asyncio.get_running_loop()
                answer = await loop.run_in_executor(self._pool, self._screen, text)
        except JudgeError:
            raise
        except Exception as exc:
            log.warning("python judge %s raised %s", self._name, type(exc).__name__)
            raise JudgeError("internal", f"{type(exc).__name__} in the user's judge") from exc
        return self._verdict(answer, time.perf_counter() - started)

    def _verdict(self, answer: object, latency_s: float) -> Verdict:
        if isinstance(answer, bool):
            categories = self._categories[:1] if answer else ()
            return Verdict(self._name, answer, categories, latency_s=latency_s)
        if not isinstance(answer, Verdict):
            raise JudgeError("parse", f"screen() returned {type(answer).__name__}, not a Verdict")
        if not answer.flagged:
            return Verdict(self._name, False, score=answer.score, latency_s=latency_s)
        return Verdict(
            self._name,
            True,
            known_as(answer.categories, self._categories),
            score=answer.score,
            reason=str(answer.reason)[:200],
            latency_s=latency_s,
        )

    async def aclose(self) -> None:
        """Close the user's judge (``aclose`` or ``close``) and this judge's threads."""
        try:
            closer = getattr(self._judge, "aclose", None) or getattr(self._judge, "close", None)
            if callable(closer):
                result = closer()
                if inspect.isawaitable(result):
                    await result
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
