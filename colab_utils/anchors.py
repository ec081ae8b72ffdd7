"""Published MVTec AD figures of the methods we compare with (percent).

Each entry maps a category to ``(image AUROC, pixel AUROC)``; ``None`` where the
source does not publish the figure. Sources are given per method; the numbers
are copied from the papers or the authors' released results, never measured here.
"""

from __future__ import annotations

ANCHORS: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "SSIM-AE (MVTec AD paper)": {
        "bottle": (None, 93.0), "capsule": (None, 94.0), "hazelnut": (None, 97.0), "screw": (None, 96.0),
    },
    "L2-AE (MVTec AD paper)": {
        "bottle": (None, 86.0), "capsule": (None, 88.0), "hazelnut": (None, 95.0), "screw": (None, 96.0),
    },
    "RIAD": {
        "bottle": (99.9, 98.4), "capsule": (88.4, 92.8), "hazelnut": (83.3, 96.1), "screw": (84.5, 98.8),
    },
    "DRAEM": {
        "bottle": (99.2, 99.1), "capsule": (98.5, 94.3), "hazelnut": (100.0, 99.7), "screw": (93.9, 97.6),
    },
    "PaDiM WR50": {
        "bottle": (99.9, 98.3), "capsule": (91.3, 98.5), "hazelnut": (92.0, 98.2), "screw": (85.8, 98.5),
    },
    "PatchCore WR50": {
        "bottle": (100.0, 98.5), "capsule": (97.9, 99.0), "hazelnut": (100.0, 98.7), "screw": (98.8, 99.5),
    },
}

SOURCES = {
    "SSIM-AE (MVTec AD paper)": "Bergmann et al., MVTec AD, CVPR 2019, Table 3 (pixel only)",
    "L2-AE (MVTec AD paper)": "Bergmann et al., MVTec AD, CVPR 2019, Table 3 (pixel only)",
    "RIAD": "as reported in the DRAEM paper (ICCV 2021), Tables 1-2",
    "DRAEM": "Zavrtanik et al., DRAEM, ICCV 2021, Tables 1-2",
    "PaDiM WR50": "PaDiM paper, as cited by DRAEM",
    "PatchCore WR50": "amazon-science/patchcore-inspection results",
}
