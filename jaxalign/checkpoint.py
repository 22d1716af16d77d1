"""Checkpoint and resume a search (and the embedded model's training) with orbax-checkpoint.

:class:`Checkpointer` saves any pytree; the search's holds the whole :class:`~jaxalign.search.SearchState` (strategy state, PRNG key,
generation, best solution, fitness and image, baseline) after a completed generation. Because a
generation is a deterministic function of that state, a run resumed from generation ``g``
recomputes generations ``g+1, ...`` exactly as the uninterrupted run would; the runner truncates
``metrics.jsonl`` to the lines up to ``g``, so no line is lost or written twice.

Saves are synchronous and orbax finalises a step only after all its files are written, so a
process killed mid-save leaves the previous steps intact. SIGINT and SIGTERM arriving during a save
are held until it has finished (then raised as usual), so an interrupt never leaves a half-written
step or orbax's thread tracebacks; temporary step folders of a killed process are removed when the
checkpointer closes. A step that cannot be read back is skipped with a warning, falling back to the
one before. Training (:mod:`jaxalign.train`) saves its optimiser state through the same class.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import jax

from jaxalign.errors import output_error, write_refused

_METADATA_BYTES = 256 * 1024  # what orbax writes besides the arrays (metadata, manifests), with room to spare



class Checkpointer:
    """Numbered steps of one pytree in ``directory``: ``save``, ``restore_latest``, ``close``."""

    def __init__(self, directory: str | Path, every: int, keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.every = every
        self.directory = Path(directory).absolute()
        self._remove_partial_steps()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def due(self, generation: int, last: bool) -> bool:
        return self.every > 0 and (last or generation % self.every == 0)

    def save(self, generation: int, state: Any) -> None:
        """Save ``state`` as step ``generation``; a refused write (a full disk) is one :class:`OutputError`, and the
        partial step it leaves is removed when the checkpointer closes."""
        storable = _to_storable(state)
        # Checked first: orbax's threads fail a full disk noisily (tracebacks from its event loop), however it is caught.
        needed, free = sum(leaf.nbytes for leaf in jax.tree.leaves(storable)) + _METADATA_BYTES, shutil.disk_usage(self.directory).free
        if free < needed:
            raise write_refused(self.directory / str(generation), errno.ENOSPC, f" (a checkpoint needs about {needed} bytes, {free} are free)")
        try:
            with _signals_held(), _without_logged_write_failures():
                self._manager.save(generation, args=self._ocp.args.StandardSave(storable), force=True)
                self._manager.wait_until_finished()
        except Exception as error:
            refused = output_error(error, self.directory / str(generation))
            if refused is None:
                raise
            raise refused from None

    def restore_latest(self, template: Any, at_most: int | None = None) -> tuple[int, Any] | None:
        """The newest readable checkpoint (at step ``at_most`` or before, if given) as (step, state) shaped like
        ``template``, or None when there is none; later steps are deleted (they are recomputed and saved again)."""
        target = jax.eval_shape(lambda: _to_storable(template))
        steps = sorted((step for step in self._manager.all_steps() if at_most is None or step <= at_most), reverse=True)
        for i, step in enumerate(steps):
            try:
                restored = self._manager.restore(step, args=self._ocp.args.StandardRestore(target))
            except Exception as error:  # a corrupt or partial step: say so and use the previous one
                fallback = f"falling back to generation {steps[i + 1]}" if i + 1 < len(steps) else "starting over"
                print(f"jaxalign: warning: checkpoint at generation {step} is unreadable ({type(error).__name__}); {fallback}", file=sys.stderr)
                continue
            self._discard_after(step)
            return step, _from_storable(restored, template)
        self._discard_after(-1)
        return None

    def _discard_after(self, step: int) -> None:
        # Steps after the one resumed from are unreadable; they are recomputed and saved again.
        for later in self._manager.all_steps():
            if later > step:
                self._manager.delete(later)

    def close(self) -> None:
        self._manager.close()
        self._remove_partial_steps()

    def _remove_partial_steps(self) -> None:
        for partial in self.directory.glob("*.orbax-checkpoint-tmp*"):  # left by a process killed mid-save
            shutil.rmtree(partial, ignore_errors=True)


class _DropWriteFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "os_error_code" not in record.getMessage()


@contextlib.contextmanager
def _without_logged_write_failures():
    """orbax's threads log each refused write (a screenful per array) before the save raises; the raised error is
    reported in one line instead. Other records pass, and the filter is removed afterwards."""
    logger, drop = logging.getLogger("absl"), _DropWriteFailures()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM for the duration of the block, then deliver them; the previous handlers are restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    # Only signals Python handles: an ignored one stays ignored, one set outside Python (None) is left alone.
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) not in (None, signal.SIG_IGN)]
    previous = {s: signal.signal(s, lambda number, frame: received.append(number)) for s in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(received):  # each distinct signal once, in arrival order
            signal.raise_signal(number)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree: Any) -> Any:
    # Typed PRNG keys are not array data orbax can write; store their raw key bits.
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_storable(tree: Any, template: Any) -> Any:
    return jax.tree.map(lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x, tree, template)
