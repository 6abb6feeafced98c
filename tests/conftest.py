"""Test-wide settings: one torch thread (the machine has 2 cores shared by test workers)."""

import torch

torch.set_num_threads(1)
