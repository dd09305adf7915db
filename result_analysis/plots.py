"""The paper's figures from the best-setting result files (Figures 4 and 6).

A library module, not a script: ``result_analysis.line_and_box_plot_cummulative`` imports it; run that.

- Figure 4 (``lineplot``): one subplot per dataset, mean test MSE over the runs against bits,
  one line per method of ``methods`` (by default Table 2's; FP dashed, Bw-SQ thicker), one
  legend for the figure.
- Figure 6 (``boxplot_{b}bits``): per bit width, one subplot per dataset with a box plot of the
  per-run test MSEs of each method of ``methods``, the single runs as points on top, and a
  dashed horizontal line at the FP median (where FP has runs).

A classification dataset's subplots show the test accuracy instead (higher is better), and say
so on their axis.

Methods without a test loss (empty cells: not computed) are left out: a line only joins the bit
widths a method has, and a subplot has boxes only for the methods with runs there. Every figure
is written as PNG and PDF; axis limits follow the data.
"""

from __future__ import annotations

import io
import itertools
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from core.atomic import atomic_write_bytes  # noqa: E402
from result_analysis.analysis import REFERENCE_METHOD, TABLE2_METHODS, long_losses  # noqa: E402

MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "h", "<", ">", "p", "d")
DPI = 150


def method_colors(methods: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A colour per method: FP grey, Bw-SQ vermillion, the others from the colorblind palette
    (nine colours, repeated for more methods)."""
    palette = sns.color_palette("colorblind")
    others = itertools.cycle(palette[i] for i in (0, 9, 2, 5, 4, 1, 7, 8, 6))
    special = {"FP": (0.45, 0.45, 0.45), REFERENCE_METHOD: palette[3]}
    return {m: special[m] if m in special else next(others) for m in methods}


def dataset_axes(datasets: Sequence[str], width: float, height: float) -> tuple[Figure, list[Axes]]:
    """A figure with one titled subplot per dataset (at most three per row, unused cells removed)."""
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             layout="constrained", squeeze=False)
    cells = list(grid.flat)
    for ax in cells[len(datasets):]:
        fig.delaxes(ax)
    for ax, dataset in zip(cells, datasets):
        ax.set_title(dataset)
        ax.grid(True, alpha=0.3)
    return fig, cells[: len(datasets)]


def shown_metric(long: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """``long`` with a column ``shown``: the test accuracy of classification datasets (those with accuracies),
    else the test loss; and per dataset the name of what is shown (``MSE`` or ``accuracy``)."""
    datasets = list(long["dataset"].cat.categories)
    if "test_accuracy" not in long.columns:
        return long.assign(shown=long["test_loss"]), dict.fromkeys(datasets, "MSE")
    classified = set(long.loc[long["test_accuracy"].notna(), "dataset"])
    shown = long["test_accuracy"].where(long["dataset"].isin(classified), long["test_loss"])
    return long.assign(shown=shown), {d: "accuracy" if d in classified else "MSE" for d in datasets}


def plot_lines(long: pd.DataFrame, methods: Sequence[str] = TABLE2_METHODS) -> Figure:
    """Figure 4: per dataset the mean test MSE (accuracy) against bits, a line per method of ``methods`` with
    test losses there."""
    long, metric = shown_metric(long)
    means = (long[long["method"].isin(methods)].dropna(subset=["shown"])
             .groupby(["dataset", "method", "bits"], observed=True)["shown"].mean())
    datasets = list(long["dataset"].cat.categories)
    colors = method_colors(methods)
    fig, axes = dataset_axes(datasets, 3.8, 2.9)
    for ax, dataset in zip(axes, datasets):
        for method, marker in zip(methods, itertools.cycle(MARKERS)):
            if (dataset, method) not in means.index:
                continue
            series = means.loc[(dataset, method)]
            emphasis = method == REFERENCE_METHOD
            ax.plot(series.index, series.to_numpy(), label=method, color=colors[method],
                    marker=marker, linestyle="--" if method == "FP" else "-",
                    linewidth=2.8 if emphasis else 1.4, markersize=7 if emphasis else 4,
                    zorder=3 if emphasis else 2)
        ax.set_xticks(sorted(long["bits"].unique()))
        ax.set_xlabel("bits")
        ax.set_ylabel(f"mean test {metric[dataset]}")
    handles = legend_handles(axes, methods)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles),
               frameon=False)
    return fig


def legend_handles(axes: Sequence[Axes], methods: Sequence[str]) -> dict[str, Artist]:
    """The first handle per method label over all axes, in the order of methods."""
    found: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    return {m: found[m] for m in methods if m in found}


def plot_boxes(long: pd.DataFrame, bits: int, methods: Sequence[str] = TABLE2_METHODS) -> Figure:
    """Figure 6 for one bit width: per dataset box plots of the per-run test MSE of each method of ``methods``
    with runs there."""
    long, metric = shown_metric(long)
    sub = (long[(long["bits"] == bits) & long["method"].isin(methods)]
           .dropna(subset=["shown"]).astype({"method": str}))
    datasets = list(long["dataset"].cat.categories)
    colors = method_colors(methods)
    fig, axes = dataset_axes(datasets, 3.8, 3.2)
    for ax, dataset in zip(axes, datasets):
        data = sub[sub["dataset"] == dataset]
        present = [m for m in methods if m in set(data["method"])]
        if not present:
            continue
        with warnings.catch_warnings():  # seaborn 0.13 passes the deprecated vert= to matplotlib >= 3.11
            warnings.filterwarnings("ignore", message="vert: bool", category=DeprecationWarning)
            sns.boxplot(data=data, x="method", y="shown", order=present, hue="method",
                        hue_order=present, palette=colors, dodge=False, legend=False,
                        showfliers=False, width=0.6, linewidth=1, boxprops={"alpha": 0.8}, ax=ax)
        sns.stripplot(data=data, x="method", y="shown", order=present, color="black",
                      size=2.5, alpha=0.7, jitter=0.15, ax=ax)
        if "FP" in present:
            fp_median = data.loc[data["method"] == "FP", "shown"].median()
            ax.axhline(fp_median, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel("")
        ax.set_ylabel(f"test {metric[dataset]}")
        ax.tick_params(axis="x", labelrotation=45)
    fig.suptitle(f"{bits} bits (dashed: FP median)")
    return fig


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write fig as name.png and name.pdf into out_dir atomically; return the paths."""
    paths = [Path(out_dir) / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix[1:], dpi=DPI)
        atomic_write_bytes(path, buffer.getvalue())
    return paths


def write_figures(frames: dict[str, pd.DataFrame], out_dir: Path, lineplot: bool = True,
                  boxplot: bool = True) -> list[Path]:
    """Write Figure 4 and/or one Figure 6 per bit width into out_dir; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    long = long_losses(frames)
    figures: list[tuple[str, Figure]] = []
    if lineplot:
        figures.append(("lineplot", plot_lines(long)))
    if boxplot:
        figures += [(f"boxplot_{b}bits", plot_boxes(long, b)) for b in sorted(long["bits"].unique())]
    paths = []
    for name, fig in figures:
        paths += save_figure(fig, out_dir, name)
        plt.close(fig)
    return paths
