"""The reward bridge: the one interface through which the trainer gets the PyTorch rewards.

Two implementations, chosen by ``reward.bridge.mode`` in
:func:`irpo_jax.rewards.remote.open_reward_bridge`:

* ``"process"``: :class:`irpo_jax.rewards.remote.RewardProcess`, the client of a separate
  reward process (``python -m torch_bridge.reward_server``; frames of :mod:`wire`);
* ``"inprocess"``: ``torch_bridge.reward_server.InProcessRewards``, the same components served
  on a thread of the calling process (jax arrays enter torch through DLPack).

Both subclass :class:`RewardBridge`, which states the contract and holds the parts they share
(``score``, the context manager). The trainer (``irpo_jax.training.rollouts``) uses
``live_components``, ``score`` and ``close``; ``tests/test_reward_process.py`` runs the same
behavioural checks on both.

Like :mod:`wire`, this module needs neither jax nor torch: the reward server imports it.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any, Protocol, Self, runtime_checkable

from irpo_jax.rewards.wire import RewardResult

__all__ = ["RewardBridge"]


@runtime_checkable
class RewardBridge(Protocol):
    """Scores batches of restorations with the live PyTorch reward components.

    The contract, for every implementation:

    * ``info``: the handshake record, a dict with ``"type": "hello"``, ``"v"`` (the wire
      protocol version) and ``"components"`` (name -> that component's ``info()``: model id,
      weight hashes, device, ...).
    * ``live_components``: the names of the components served, in the handshake's order.
    * ``request(degraded, restored, clean, task_ids=None, sample_ids=None, *, components=None)``
      returns at once a ``concurrent.futures.Future`` of a :class:`~wire.RewardResult`; the
      images are ``(B, H, W, 3)`` float32 in [0, 1] (numpy or jax), ``task_ids`` and
      ``sample_ids`` ``B`` ints. The result's ``scores`` maps each requested component (all
      live ones when ``components`` is None), in the requested order, to ``(B,)`` float32 raw
      scores; a component that raised gives NaN and an ``errors`` entry, never a failed future.
      Numpy inputs are copied at the call: the caller may reuse its buffers at once.
    * ``request`` raises ``ValueError`` for images not of one ``(B, H, W, 3)`` shape, ids of the
      wrong length or a component that is not live, ``TypeError`` for images that are not
      float32 (or an exact up-cast of it), and ``RuntimeError`` once the bridge is closed.
    * ``score(..., timeout=None)`` is ``request(...).result(timeout)``.
    * ``close()`` releases the bridge (a process, a thread); it may be called twice. The bridge
      is also a context manager that closes on exit.
    """

    info: dict[str, Any]

    @property
    def live_components(self) -> list[str]:
        """The components served, in the handshake's order."""
        ...

    def request(
        self,
        degraded: Any,
        restored: Any,
        clean: Any,
        task_ids: Any = None,
        sample_ids: Any = None,
        *,
        components: Sequence[str] | None = None,
    ) -> concurrent.futures.Future[RewardResult]:
        """Queues a batch for scoring and returns its future at once (see the class docstring)."""
        ...

    def close(self) -> None:
        """Releases the bridge; idempotent."""
        ...

    def score(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> RewardResult:
        """``request(...).result(timeout)``: the same arguments, waiting for the result."""
        return self.request(*args, **kwargs).result(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
