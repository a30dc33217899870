"""PNG plots of an analysis run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from finsurg.steer.findings import HeldoutRow, Tuning  # noqa: E402


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dimension_heatmap(effect: torch.Tensor, dims: list[int], band: list[int], title: str, path: Path) -> Path:
    """effect: [layers, hidden]; one column per selected dimension."""
    data = effect[:, dims].numpy()
    limit = float(abs(data).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(6, len(dims) * 0.32), 6))
    image = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
    ax.set_xticks(range(len(dims)), [str(d) for d in dims], rotation=90, fontsize=7)
    ax.set_xlabel("residual dimension")
    ax.set_ylabel("layer")
    ax.axhspan(band[0] - 0.5, band[-1] + 0.5, fill=False, edgecolor="black", linewidth=1.5)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="effect size (Cohen's d)")
    return _save(fig, path)


def head_heatmap(diff: torch.Tensor, title: str, path: Path) -> Path:
    data = diff.numpy()
    limit = float(abs(data).max()) or 1.0
    fig, ax = plt.subplots(figsize=(6, 6))
    image = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="attention to keywords, difference")
    return _save(fig, path)


def lens_curves(before: dict, after: dict, band: list[int], alpha: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (group, values), color in zip(before.items(), ("tab:green", "tab:red")):
        ax.plot(values, color=color, linestyle="--", label=f"{group}, base")
        ax.plot(after[group], color=color, label=f"{group}, alpha {alpha:+g}")
    ax.axvspan(band[0], band[-1], color="grey", alpha=0.15, label="steered layers")
    ax.set_yscale("log")
    return _finish(
        fig, ax, "layer", "probability of token group (final position)", "Logit lens before and after surgery", path
    )


def sweep_plot(rows: list[dict], positive: str, path: Path) -> Path:
    alphas = [row["alpha"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(alphas, [row["preference"] for row in rows], marker="o", color="tab:blue")
    ax.set_xlabel("alpha")
    ax.set_ylabel(f"held-out {positive} preference", color="tab:blue")
    twin = ax.twinx()
    twin.plot(alphas, [row["perplexity"] for row in rows], marker="s", color="tab:orange")
    twin.set_ylabel("neutral-text perplexity", color="tab:orange")
    ax.set_title("The dial: preference and coherence across alpha")
    return _save(fig, path)


def pareto_plot(tuning: Tuning, alpha: float, path: Path) -> Path:
    """Every measured trial's cost against its two-sided shift; the front and the chosen point marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    measured = [t for t in tuning.trials if t.two_sided is not None]
    for method, marker in (("caa", "o"), ("pca", "s"), ("seed", "^")):
        points = [t for t in measured if t.method == method]
        if points:
            ax.scatter([t.kl for t in points], [t.two_sided for t in points], marker=marker, alpha=0.6, label=method)
    front = tuning.pareto
    ax.plot([t.kl for t in front], [t.two_sided for t in front], color="black", linewidth=1, label="Pareto front")
    budget = tuning.budget
    ax.scatter(
        [tuning.chosen.kl],
        [tuning.chosen.two_sided],
        s=160,
        facecolors="none",
        edgecolors="red",
        linewidths=2,
        label=f"chosen (alpha {alpha:g})",
    )
    ax.axvline(budget, color="red", linestyle="--", linewidth=1, label=f"KL budget {budget:g}")
    ax.set_xscale("log")
    return _finish(
        fig,
        ax,
        "mean per-token KL from the base on neutral replies",
        "two-sided shift in log-odds (tune split)",
        "Tuning: behaviour shift against capability cost",
        path,
    )


def item_plot(heldout: dict[str, HeldoutRow], path: Path) -> Path:
    """Per held-out item, the log-odds shift of each steering and prompt, sorted."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {
        "steered": "tab:green",
        "conservative": "tab:red",
        "prompt_positive": "tab:olive",
        "prompt_negative": "tab:purple",
    }
    for name, color in styles.items():
        if name in heldout:
            values = sorted(heldout[name].per_item)
            ax.plot(range(len(values)), values, marker=".", color=color, label=name.replace("_", " "))
    ax.axhline(0, color="black", linewidth=0.8)
    return _finish(
        fig,
        ax,
        "held-out item (sorted by shift)",
        "change in log-odds, positive − negative answer",
        "Per-item steerability on held-out questions",
        path,
    )
