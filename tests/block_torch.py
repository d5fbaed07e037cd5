"""pytest plugin (``-p tests.block_torch``) that makes torch and the bridge stack unimportable.

Used by ``test_without_torch.py`` to show that ``irpo_jax`` and its tests need no torch. An
import hook raises ``ModuleNotFoundError`` (as on a machine without torch) instead of putting
``None`` into ``sys.modules``, which libraries that probe ``sys.modules`` (scipy) trip over.
"""

import importlib.abc
import sys

BLOCKED = ("torch", "torchvision", "lpips", "transformers", "torch_bridge")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by tests/block_torch.py)")
        return None


sys.meta_path.insert(0, _Blocker())
