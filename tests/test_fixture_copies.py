"""The torch-free numpy copy of the fixture weights equals the official ``state_dict.pth``."""

import numpy as np
import pytest

pytestmark = pytest.mark.torch


def test_npz_copy_equals_pth(tiny_dir):
    import torch

    sd = torch.load(tiny_dir / "state_dict.pth", map_location="cpu", weights_only=True)
    with np.load(tiny_dir / "state_dict.npz") as z:
        assert list(z.files) == list(sd)
        for key, tensor in sd.items():
            np.testing.assert_array_equal(z[key], tensor.numpy(), err_msg=key)
