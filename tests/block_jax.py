"""Import hook that makes jax and the Flax stack unimportable (as in a torch-only environment).

Used by ``test_without_torch.py`` to show that the reward process (``torch_bridge.reward_server``)
and the wire format it shares with the trainer load without jax.
"""

import importlib.abc
import sys

BLOCKED = ("jax", "jaxlib", "flax", "optax", "orbax", "grain", "distrax", "ml_collections")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by tests/block_jax.py)")
        return None


sys.meta_path.insert(0, _Blocker())
