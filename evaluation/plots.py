"""Report figures as PNG bytes (matplotlib's Agg canvas; no display, no global pyplot state).

Each function takes a table from :mod:`evaluation.report` and returns the PNG, so that reports can
embed it (base64 in HTML) or write it next to the markdown.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def heatmap_png(
    matrix: pd.DataFrame,
    title: str,
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "RdBu",
    colorbar_label: str = "",
) -> bytes:
    """A square matrix with its values written in the cells (NaN cells left blank)."""
    values = matrix.to_numpy(dtype=float)
    k = max(len(matrix.index), len(matrix.columns))
    fig = _figure(1.2 + 0.75 * k, 0.9 + 0.65 * k)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(values.shape[1]), [str(c) for c in matrix.columns], rotation=40, ha="right")
    ax.set_yticks(range(values.shape[0]), [str(i) for i in matrix.index])
    mid = (vmin + vmax) / 2
    span = (vmax - vmin) / 2 or 1.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            color = "white" if abs(v - mid) > 0.6 * span else "black"
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if colorbar_label:
        bar.set_label(colorbar_label, fontsize=8)
    return _png(fig)


def intervals_png(
    table: pd.DataFrame,
    title: str,
    *,
    value: str,
    low: str,
    high: str,
    xlabel: str,
    reference: float | None = None,
) -> bytes:
    """One horizontal interval per row (``low``..``high``) with a dot at ``value``; the first row on top."""
    n = len(table)
    fig = _figure(6.0, 0.8 + 0.38 * n)
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    v = table[value].to_numpy(dtype=float)
    lo = table[low].to_numpy(dtype=float)
    hi = table[high].to_numpy(dtype=float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.hlines(y[ok], lo[ok], hi[ok], color="tab:blue", linewidth=2)
    ax.plot(v, y, "o", color="tab:blue")
    if reference is not None:
        ax.axvline(reference, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(y, [str(i) for i in table.index])
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def bias_png(judges: pd.DataFrame, title: str, *, z: float) -> bytes:
    """Position and length bias per source (log-odds ± z·SE), side by side, with zero marked."""
    n = len(judges)
    fig = _figure(8.0, 1.0 + 0.38 * n)
    y = np.arange(n)[::-1]
    for k, (name, label) in enumerate((("position", "first-slot bonus"), ("length", "per s.d. of length diff."))):
        ax = fig.add_subplot(1, 2, k + 1)
        v = judges[f"{name}_logodds"].to_numpy(dtype=float)
        se = judges[f"{name}_se"].to_numpy(dtype=float)
        ok = np.isfinite(v) & np.isfinite(se)
        ax.errorbar(v[ok], y[ok], xerr=z * se[ok], fmt="o", color="tab:red", capsize=3)
        ax.axvline(0.0, color="gray", linestyle="--", linewidth=1)
        ax.set_yticks(y, [str(i) for i in judges.index] if k == 0 else [""] * n)
        ax.set_xlabel(f"{name} bias, log-odds ({label})", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def convergence_png(
    traces: dict[str, pd.DataFrame],
    columns: dict[str, str],
    title: str,
    references: dict[str, dict[str, float]] | None = None,
) -> bytes:
    """One panel per column (name -> axis label): each trace's value against its ``iteration``, and
    ``references[column]`` (label -> value: π*, π0, the baselines' final values) as dashed horizontal
    lines, so that a panel shows how far every trace is from them (the y-axis spans them all)."""
    fig = _figure(3.6 * len(columns), 3.2)
    styles = ("--", ":", "-.", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1)))
    for k, (col, label) in enumerate(columns.items()):
        ax = fig.add_subplot(1, len(columns), k + 1)
        for name, frame in traces.items():
            if col in frame and frame[col].notna().any():
                ax.plot(frame["iteration"], frame[col], marker="o", label=name)
        for i, (name, value) in enumerate(((references or {}).get(col) or {}).items()):
            if value is not None and np.isfinite(value):
                ax.axhline(value, color=f"C{7 + i % 3}" if name != "π*" else "black", linestyle=styles[i % len(styles)],
                           linewidth=1.2, label=f"{name} ({value:.2f})")  # fmt: skip
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def marginals_png(marginals: dict[str, list[float]], categories: list[str], title: str, ylabel: str) -> bytes:
    """Grouped bars: one group per category, one bar per policy (name -> shares per category)."""
    fig = _figure(1.2 + 0.5 * len(categories) * max(len(marginals), 1) / 2, 3.0)
    ax = fig.add_subplot()
    width = 0.8 / max(len(marginals), 1)
    x = np.arange(len(categories))
    for i, (name, values) in enumerate(marginals.items()):
        color = "black" if name.startswith("π*") else None
        ax.bar(x + (i - (len(marginals) - 1) / 2) * width, values, width, label=name, color=color)
    ax.set_xticks(x, categories)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(title, fontsize=10)
    return _png(fig)
