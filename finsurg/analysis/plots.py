"""PNG plots of an analysis run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


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
    ax.set_xlabel("layer")
    ax.set_ylabel("probability of token group (final position)")
    ax.set_title("Logit lens before and after surgery")
    ax.legend(fontsize=8)
    return _save(fig, path)


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
