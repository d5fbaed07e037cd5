"""pytest plugin (``-p tests.block_torch``) that makes torch and the bridge stack unimportable.

Used by ``test_without_torch.py`` to show that ``irpo_jax`` and its tests need no torch.
"""

import sys

for _name in ("torch", "torchvision", "lpips", "transformers", "torch_bridge"):
    sys.modules[_name] = None  # `import torch` now raises ImportError
