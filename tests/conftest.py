from __future__ import annotations

import torch

torch.set_num_threads(1)  # two CPU cores: keep tests from fighting over them, and timings steadier
