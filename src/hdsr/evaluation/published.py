"""Published figures of the HDSRNet paper (Tian et al., arXiv 2402.15704), PSNR dB / SSIM."""

from __future__ import annotations

BENCHMARKS = ("Set5", "Set14", "B100", "Urban100")

#: Tables II-V: {(method, scale): {set: (psnr, ssim)}}
PUBLISHED: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("bicubic", 2): {
        "Set5": (33.66, 0.9299),
        "Set14": (30.24, 0.8688),
        "B100": (29.56, 0.8431),
        "Urban100": (26.88, 0.8403),
    },
    ("bicubic", 3): {
        "Set5": (30.39, 0.8682),
        "Set14": (27.55, 0.7742),
        "B100": (27.21, 0.7385),
        "Urban100": (24.46, 0.7349),
    },
    ("bicubic", 4): {
        "Set5": (28.42, 0.8104),
        "Set14": (26.00, 0.7027),
        "B100": (25.96, 0.6675),
        "Urban100": (23.14, 0.6577),
    },
    ("HDSRNet", 2): {
        "Set5": (37.95, 0.9604),
        "Set14": (33.52, 0.9170),
        "B100": (32.14, 0.8994),
        "Urban100": (32.00, 0.9267),
    },
    ("HDSRNet", 3): {
        "Set5": (34.31, 0.9263),
        "Set14": (30.27, 0.8412),
        "B100": (29.06, 0.8048),
        "Urban100": (28.02, 0.8493),
    },
    ("HDSRNet", 4): {
        "Set5": (32.15, 0.8927),
        "Set14": (28.56, 0.7799),
        "B100": (27.55, 0.7357),
        "Urban100": (26.01, 0.7827),
    },
}

#: Table I (x4, Urban100): {row: (paper wording, psnr, ssim)}; rows match model=ablation/r<row>_*
TABLE1: dict[int, tuple[str, float, float]] = {
    1: ("six stacked Conv+ReLU + CB", 25.13, 0.7525),
    2: ("HUNet without dilated and dynamic Conv+ReLU + CB", 25.22, 0.7559),
    3: ("HUNet without dynamic Conv+ReLU + CB", 25.46, 0.7649),
    4: ("HUNet without dilated Conv+ReLU + CB", 25.61, 0.7697),
    5: ("HUNet with Conv+ReLU instead of dilated + CB", 25.74, 0.7739),
    6: ("HUNet with Conv+ReLU instead of dynamic + CB", 25.68, 0.7729),
    7: ("HUNet + CB", 25.75, 0.7740),
    8: ("HDSRNet without residual learning in SLNet", 25.99, 0.7825),
    9: ("HDSRNet", 26.01, 0.7827),
}
