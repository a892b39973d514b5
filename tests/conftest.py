"""Tests run on 2 threads, the size of the CI machine."""
import torch

torch.set_num_threads(2)
