"""What the demo's test modules share: a hand-made four-code VQ and one record per task."""

from __future__ import annotations

import numpy as np

# Four patch vectors far apart: images made of them encode back to exactly their codes.
CODEBOOK = np.array([[0, 0, 0, 0], [16, 16, 16, 16], [0, 16, 0, 16], [16, 0, 16, 0]], dtype=float)
CODES = np.array([0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 2, 2, 0, 3, 0, 3])
UND = {
    "image": "unused.png",
    "conversations": [{"from": "human", "value": "<image>\nwhat digit is this?"}, {"from": "gpt", "value": "7"}],
}
GEN = {"conversations": [{"from": "human", "value": "draw digit 7"}, {"from": "gpt", "value": "<image>"}], "image": "x"}
