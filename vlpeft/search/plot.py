"""Plot a search's per-layer history (DAS skip probabilities, KAB layer preferences) to a PNG.

Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), and writes atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from vlpeft._io import atomic_path

TRANSFORMS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "softmax": lambda h: torch.softmax(h, dim=-1),
}


def save_history_plot(
    history: Tensor | Sequence[Sequence[float]],
    path: str | Path,
    title: str,
    ylabel: str,
    chosen: Sequence[int] | None = None,
    transform: Callable[[Tensor], Tensor] | str | None = None,
    xlabel: str = "recorded step",
) -> Path:
    """One line per layer over the recorded steps; ``chosen`` layers drawn thick and marked in the legend.

    ``history``: [T, L] (rows = records, columns = layers). ``transform`` maps the raw rows before plotting:
    a callable or "sigmoid" (DAS gates → skip probability) / "softmax" (KAB α → preference).
    An empty history gives a plot that says so rather than an error, so an epoch-end hook never crashes.
    """
    h = torch.as_tensor(history, dtype=torch.float64).detach().cpu() if not isinstance(history, Tensor) \
        else history.detach().to("cpu", torch.float64)
    if h.dim() == 1 and h.numel() == 0:
        h = h.reshape(0, 0)
    if h.dim() != 2:
        raise ValueError(f"history must be 2-D [steps, layers], got shape {tuple(h.shape)}")
    if isinstance(transform, str):
        if transform not in TRANSFORMS:
            raise ValueError(f"transform={transform!r}: use one of {sorted(TRANSFORMS)} or a callable")
        transform = TRANSFORMS[transform]
    if transform is not None and h.shape[0] > 0:
        h = transform(h)
    steps, layers = h.shape
    chosen_set = {int(c) for c in (chosen or ())}
    bad = sorted(c for c in chosen_set if not 0 <= c < max(layers, 1))
    if layers and bad:
        raise ValueError(f"chosen layer(s) {bad} outside 0..{layers - 1}")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if steps == 0:
        ax.text(0.5, 0.5, "no history recorded yet", ha="center", va="center", transform=ax.transAxes)
    else:
        import matplotlib

        cmap = matplotlib.colormaps["tab10" if layers <= 10 else "tab20"]
        x = list(range(steps))
        marker = "o" if steps <= 20 else None  # a few points would be invisible as bare lines
        for i in range(layers):
            picked = i in chosen_set
            ax.plot(
                x, h[:, i].tolist(),
                color=cmap(i % cmap.N),
                linewidth=2.8 if picked else 1.0,
                alpha=1.0 if picked else 0.55,
                marker=marker, markersize=4 if picked else 2,
                zorder=3 if picked else 2,
                label=f"layer {i} (chosen)" if picked else f"layer {i}",
            )
        ax.legend(fontsize="small", ncol=max(1, (layers + 15) // 16), loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
