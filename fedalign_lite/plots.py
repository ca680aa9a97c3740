"""Figure helpers the notebooks share (matplotlib only; each draws on an axis it is given)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from fedalign_lite.data.partition import client_histograms


def plot_mean_band(ax, curves: list, label: str, x=None, **style):
    """Mean over seeds with a +-1 std band. ``curves``: one 1-D sequence per seed, equal lengths."""
    arr = np.asarray(curves, dtype=np.float64)
    mean, std = np.nanmean(arr, 0), np.nanstd(arr, 0)
    x = np.arange(arr.shape[1]) if x is None else np.asarray(x)
    line, = ax.plot(x, mean, label=f"{label} (n={arr.shape[0]})", **style)
    if arr.shape[0] > 1:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    return line


def plot_distributions(ax, options: list[str], dists: dict, title: str = ""):
    """Grouped bars: one bar group per option, one bar per named distribution."""
    width = 0.8 / len(dists)
    x = np.arange(len(options))
    for i, (name, d) in enumerate(dists.items()):
        ax.bar(x + (i - (len(dists) - 1) / 2) * width, d, width, label=name)
    ax.set_xticks(x, options)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the group")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def ema(values, half_life: float = 20.0) -> np.ndarray:
    """Exponential moving average with the given half-life in steps (FIRM smooths its curves this way)."""
    alpha = 1 - 0.5 ** (1 / half_life)
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return np.asarray(out)


def plot_histograms(labels, parts: list[np.ndarray], ax=None, title: str = ""):
    """Stacked bars: one bar per client, one colour per label (``parts`` from a partitioner)."""
    values, counts = client_histograms(labels, parts)
    ax = ax or plt.gca()
    bottom = np.zeros(len(parts))
    for j, v in enumerate(values):
        ax.bar(range(len(parts)), counts[:, j], bottom=bottom, label=str(v))
        bottom += counts[:, j]
    ax.set_xlabel("client")
    ax.set_ylabel("items")
    ax.set_title(title)
    ax.legend(fontsize=7, title="label")
    return ax
