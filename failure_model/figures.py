"""The failure model's figure: a version's validation distances, correct and wrong, under their two densities."""

from __future__ import annotations

import numpy as np

from storage.files import atomic_save_figure, pyplot


def save_kde_figure(distances, correct, correct_kde, wrong_kde, path, title: str = "") -> None:
    """Histograms of a version's validation distances (correct / wrong) under their two fitted densities."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    high = float(np.quantile(distances, 0.995)) * 1.1 if len(distances) else 1.0
    bins = np.linspace(0.0, max(high, 1e-6), 40)
    grid = np.linspace(0.0, max(high, 1e-6), 400)
    for mask, kde, colour, label in ((correct, correct_kde, "tab:blue", "correct"),
                                     (~correct, wrong_kde, "tab:red", "wrong")):
        if mask.any():
            axis.hist(distances[mask], bins=bins, density=True, alpha=0.35, color=colour,
                      label=f"{label} (n={int(mask.sum())})")
        if kde.n:
            axis.plot(grid, kde.pdf(grid), color=colour, label=f"KDE {label}")
    axis.set_xlabel("L2 distance to the decision boundary (the fit's distance mode)")
    axis.set_ylabel("density")
    axis.set_title(title)
    axis.legend()
    atomic_save_figure(path, figure)
