"""``torchtpu.monitor.progress``: a tqdm bar that shows the last logged values.

Printing the loss on a progress bar is the usual way a training loop gains a
device sync per step (``loss.item()``). This bar shows instead what a
:class:`~torchtpu.monitor.TensorBoard` last wrote, which its writer thread
brought to the host without the loop waiting.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

from torchtpu.monitor.events import PREFIX, TensorBoard


class _Progress(tqdm):
    def __init__(self, *args: Any, monitor: TensorBoard | None = None, **kwargs: Any) -> None:
        self._monitor = monitor
        self._shown_step: float | None = None
        super().__init__(*args, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            yield item
            if self._monitor is not None:
                self._show(self._monitor.latest)

    def _show(self, latest: dict[str, float]) -> None:
        step = latest.get("step")
        if step is None or step == self._shown_step:
            return
        self._shown_step = step
        shown = {k: f"{v:.4g}" for k, v in latest.items() if not k.startswith(PREFIX)}
        shown["step"] = str(int(step))
        if PREFIX + "tokens_per_s" in latest:
            shown["tok/s"] = f"{latest[PREFIX + 'tokens_per_s']:,.0f}"
        self.set_postfix(shown, refresh=False)


def progress(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    *,
    monitor: TensorBoard | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar over ``iterable`` in steps per second; given a ``monitor``, it also
    shows that TensorBoard's last written values (the loss as of the last logged
    step, with that step's number and tokens/s) without reading anything from the
    device itself. Other keywords go to ``tqdm``.

    Example::

        import torch, torchtpu.monitor

        with torchtpu.monitor.TensorBoard("runs/bar", every=10) as tb:
            for step in torchtpu.monitor.progress(range(100), monitor=tb):
                tb.log(step, loss=torch.tensor(1.0 / (step + 1)))
    """
    kwargs.setdefault("unit", "step")
    kwargs.setdefault("dynamic_ncols", True)
    return _Progress(iterable, total=total, monitor=monitor, **kwargs)
