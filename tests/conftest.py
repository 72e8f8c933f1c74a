"""Test-process settings. Tensors in the tests are tiny: one intra-op thread avoids thread thrashing on the
2-core CI machine (measured: the ratio-loss test took 12-40 s with 2 threads under load, 0.7 s with 1)."""
import torch

torch.set_num_threads(1)
