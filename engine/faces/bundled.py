"""Real face photos that ship inside installed packages (no download): for tests, benchmarks and demos."""
from __future__ import annotations

import numpy as np


def bundled_faces() -> dict:
    """name -> RGB uint8 image: matplotlib's grace_hopper.jpg and, when scikit-image is installed, the astronaut."""
    faces = {}
    try:
        import matplotlib.cbook as cbook
        import matplotlib.pyplot as plt

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            faces["grace_hopper"] = np.ascontiguousarray(plt.imread(f))
    except ImportError:
        pass
    try:
        from skimage import data

        faces["astronaut"] = data.astronaut()
    except ImportError:
        pass
    if not faces:
        raise RuntimeError("no bundled faces: install matplotlib or scikit-image (`python build.py setup`)")
    return faces
