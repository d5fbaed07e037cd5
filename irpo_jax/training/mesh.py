"""The device mesh and the multi-process helpers, under their former name: they live in
:mod:`irpo_jax.mesh` (a layer below evaluation, which builds its mesh with :func:`make_mesh` too).
"""

from irpo_jax.mesh import (  # noqa: F401 - re-exported
    host_device,
    init_distributed,
    make_mesh,
    memory_stats,
    on_mesh,
    process_rows,
    to_global,
    to_host,
)  # fmt: skip
