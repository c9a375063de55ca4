"""Render a label volume returned by the MONAI Label server over its study (a PNG of a few axial slices).

Usage (any environment with nibabel and matplotlib, e.g. the project's ``.venv``)::

    python monailabel/qrvae_app/render_overlay.py STUDY.nii.gz RESULT.nii.gz OUT.png [--truth LABEL.nii.gz]

The FLAIR volume (channel 2) of the 4D study is shown in grey, the returned lesion label in red and, when given, the
outline of the ground truth in yellow; slices are shown as 3D Slicer shows them (radiological: the patient's right on
the left).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def render(study: Path, result: Path, out: Path, truth: Path | None = None, n: int = 4, title: str = "") -> Path:
    """Write ``out``: ``n`` axial slices through the detected (else true) lesion, FLAIR + label overlay."""
    flair = np.asarray(nib.as_closest_canonical(nib.load(str(study))).dataobj[..., 2], dtype=np.float32)
    label = np.asarray(nib.as_closest_canonical(nib.load(str(result))).dataobj) > 0
    gt = np.asarray(nib.as_closest_canonical(nib.load(str(truth))).dataobj) > 0 if truth else None
    weight = label.sum((0, 1)) + (gt.sum((0, 1)) if gt is not None else 0)
    order = np.argsort(weight)[::-1][:n] if weight.any() else np.linspace(0, flair.shape[2] - 1, n + 2)[1:-1]
    slices = sorted(int(k) for k in order)
    vmax = np.percentile(flair[flair > 0], 99.5) if (flair > 0).any() else 1.0
    fig, axes = plt.subplots(1, len(slices), figsize=(3.2 * len(slices), 3.6), squeeze=False)
    for ax, k in zip(axes[0], slices):
        # RAS canonical: x runs to the patient's right; flip it so the right is on the left (radiological)
        ax.imshow(flair[::-1, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
        lab = label[::-1, :, k].T
        ax.imshow(np.ma.masked_where(~lab, lab), cmap="autumn", alpha=0.6, origin="lower")
        if gt is not None and gt[:, :, k].any():
            ax.contour(gt[::-1, :, k].T.astype(float), levels=[0.5], colors="yellow", linewidths=0.8, origin="lower")
        ax.text(0.02, 0.5, "R", color="w", transform=ax.transAxes, fontsize=8, va="center")
        ax.text(0.95, 0.5, "L", color="w", transform=ax.transAxes, fontsize=8, va="center")
        ax.set_title(f"axial slice {k}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title or f"{result.name} over FLAIR of {study.name} (red: returned lesion, yellow: truth)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    positional = {
        "study": "the 4D T1/T2/FLAIR study",
        "result": "the label volume the server returned",
        "out": "PNG to write",
    }
    for name, help_text in positional.items():
        parser.add_argument(name, type=Path, help=help_text)
    parser.add_argument("--truth", type=Path, default=None, help="ground-truth lesion label (outlined)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    print(render(args.study, args.result, args.out, args.truth, title=args.title))


if __name__ == "__main__":
    main()
