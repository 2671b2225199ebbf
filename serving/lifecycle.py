"""Model lifecycle of a serving process: the version loaded at start-up and the ones swapped in later.

* **Start-up** loads the version ``current`` names. A corrupt or missing version, or a pointer that
  leads outside the export root, *refuses to start* with a one-line reason (no traceback); the service
  does not fall back to an older version on its own, because an operator pointed ``current`` there on
  purpose and serving something else silently would hide the mistake. (Roll back with
  ``vistaste``'s export tooling: point ``current`` at a good version.) With no ``current`` at all the
  service starts and answers 503 until a version is exported.
* **Hot reload**: every worker follows the pointer. Each checks ``current`` every
  ``reload_interval_s`` and loads whatever version it names whenever that differs from the one it
  serves (forward or back), so all workers converge on the pointer's target. A failed load keeps the
  old version serving and is retried with exponential backoff (``reload_interval_s`` doubled per failure,
  capped at ``reload_backoff_max_s``) instead of a full model load every few seconds; a new pointer
  target is tried at once.
* **Workers switch together**: a loaded version goes live at the pointer's modification time plus
  ``switch_delay_s``, the same moment in every worker process of the machine, so once any worker has
  answered from the new version none answers from the old one (unless it is still loading then).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from vistaste.serving.recommender import Recommender
from vistaste.serving.versions import CURRENT, current_version_dir


class ModelLoadError(RuntimeError):
    """A version that cannot be served; the message is one line naming the directory and the reason."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:400]}"


def resolve_target(models_dir: Path) -> Path:
    """The version directory ``current`` names (see export.current_version_dir); ModelLoadError if it is
    missing or outside the export root. FileNotFoundError (no pointer at all) passes through."""
    try:
        return current_version_dir(models_dir)
    except FileNotFoundError as exc:
        if "'current' pointer" in str(exc):  # nothing exported yet: not an error of a version
            raise
        raise ModelLoadError(str(exc)) from exc
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc


def load_version(version_dir: Path, policy) -> Recommender:
    """Load one version directory; ModelLoadError (one line) whatever goes wrong inside it."""
    try:
        return Recommender(version_dir, policy)
    except Exception as exc:  # any failure inside a version makes it unservable; say which and why
        raise ModelLoadError(f"cannot serve {version_dir}: {one_line(exc)}") from exc


def switch_time(models_dir: Path, delay_s: float) -> float:
    """When a version named by ``models_dir/current`` goes live (epoch seconds): the pointer's modification
    time plus ``delay_s``; at once when there is no pointer (``models_dir`` is a version) or no delay."""
    pointer = Path(models_dir) / CURRENT
    if delay_s <= 0 or not pointer.exists():
        return 0.0
    return pointer.stat().st_mtime + delay_s


@dataclass
class Backoff:
    """When to try a target again after ``failures`` failed loads of it."""

    base_s: float
    max_s: float
    target: object = None
    failures: int = 0
    next_try: float = 0.0

    def due(self, target, now: float) -> bool:
        return target != self.target or now >= self.next_try

    def failed(self, target, now: float) -> float:
        self.failures = self.failures + 1 if target == self.target else 1
        self.target = target
        delay = min(self.base_s * 2 ** self.failures, self.max_s)
        self.next_try = now + delay
        return delay

    def reset(self) -> None:
        self.target, self.failures, self.next_try = None, 0, 0.0


async def watch_current(state, log=print) -> None:
    """Swap in the version ``current`` names whenever it changes (runs for the app's lifetime)."""
    settings = state.settings
    backoff = Backoff(settings.reload_interval_s, settings.reload_backoff_max_s)
    while True:
        await asyncio.sleep(settings.reload_interval_s)
        try:
            target = resolve_target(settings.models_dir)
        except FileNotFoundError:
            continue  # nothing exported yet
        except ModelLoadError as exc:
            key = ("pointer", str(exc))  # a different bad pointer is reported at once
            if backoff.due(key, time.monotonic()):
                delay = backoff.failed(key, time.monotonic())
                state.metrics.reload_failures.inc()
                serving = getattr(state.recommender, "version", None)
                log(f"vistaste: reload refused, still serving version {serving}: {exc} (next check in {delay:.0f} s)")
            continue
        current = state.recommender
        if current is not None and Path(target).resolve() == Path(current.version_dir).resolve():
            backoff.reset()
            continue
        if not backoff.due(target, time.monotonic()):
            continue
        try:
            fresh = await asyncio.to_thread(load_version, target, settings.seen_policy())
        except ModelLoadError as exc:
            delay = backoff.failed(target, time.monotonic())
            state.metrics.reload_failures.inc()
            log(f"vistaste: reload failed, still serving version {getattr(current, 'version', None)}: {exc} (next try in {delay:.0f} s)")
            continue
        backoff.reset()
        wait = switch_time(settings.models_dir, settings.switch_delay_s) - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
            try:
                if Path(resolve_target(settings.models_dir)).resolve() != Path(target).resolve():
                    continue  # the pointer moved again while waiting: the next check loads its new target
            except (FileNotFoundError, ModelLoadError):
                continue
        state.recommender = fresh  # one reference swap: in-flight requests keep the old object
        state.metrics.reloads.inc()
        state.metrics.serving(fresh.version, getattr(current, "version", None))
