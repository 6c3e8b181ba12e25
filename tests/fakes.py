"""Stand-ins for MNIST's digits, so Multi-MNIST canvases can be made without it."""

import numpy as np


def fake_digit_source(n_train=30, n_test=12, train_ink=200, test_ink=100, seed=0):
    """Returns {"train", "test"}: (images (n, 1, 28, 28) uint8, classes (n,) int64).

    Each digit is a solid rectangle of its split's intensity (so a canvas shows
    which split its digits came from); some touch the edge of their 28×28 frame.
    """
    rng = np.random.default_rng(seed)

    def rectangles(n, ink):
        images = np.zeros((n, 1, 28, 28), np.uint8)
        for image in images:
            top, left = rng.integers(0, 10, 2)
            bottom, right = rng.integers(18, 29, 2)
            image[0, top:bottom, left:right] = ink
        return images, rng.integers(0, 10, n).astype(np.int64)

    return {"train": rectangles(n_train, train_ink), "test": rectangles(n_test, test_ink)}
