"""The project's vocabulary: task names and ids, and the evaluation sets' names.

The ground floor of the package: it imports nothing from ``irpo_jax``, so the data readers, the
rewards, mining, training and evaluation all take their names from here and none of them has
to import another for a name.

* **Tasks** (:data:`TASKS`): ``denoise, derain, dehaze, deblur, lowlight``. The official
  ``enhance`` is ``lowlight`` here; a denoise pair's noise level is kept beside the task
  (``Record.sigma``) instead of the official ``denoise_15/25/50`` ids. A task's **id** is its
  index in :data:`TASKS` (:data:`TASK_IDS`): the data pipeline puts it in every batch and
  ``rewards.task.task_reward_by_id`` picks each sample's reward with it inside jit.
* **Evaluation sets** (:data:`TEST_SETS`): the five in-domain test sets of the five-task protocol
  and the five out-of-domain sets of IRPO Table 3 (:data:`OOD_SETS`, in that table's column
  order), with the task each measures, its folder under the data root and its layout. A group
  name (:data:`SET_GROUPS`, ``ood5``) stands for several sets wherever set names are given
  (``evaluate --sets``, ``data.eval_sets``).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["OOD_SETS", "SET_GROUPS", "TASKS", "TASK_IDS", "TEST_SETS", "expand_set_names"]

# Index = task id, as used by rewards.task.task_reward_by_id and the data pipeline.
TASKS = ("denoise", "derain", "dehaze", "deblur", "lowlight")
TASK_IDS: dict[str, int] = {t: i for i, t in enumerate(TASKS)}

# Standard test sets: name -> (task, default folder under the root, layout). "noisy" folders
# hold clean images only (noise by the seeded protocol); "sots" finds target/IIII.png by id; the
# out-of-domain layouts are each release's own (irpo_jax.data.ood_sets).
TEST_SETS: dict[str, tuple[str, str, str]] = {
    "sots": ("dehaze", "test/dehaze", "sots"),
    "rain100l": ("derain", "test/derain/Rain100L", "paired"),
    "bsd68": ("denoise", "test/denoise/bsd68", "noisy"),
    "urban100": ("denoise", "test/denoise/urban100", "noisy"),
    "gopro": ("deblur", "test/deblur/gopro", "paired"),
    "lol": ("lowlight", "test/enhance/lol", "paired"),
    # IRPO Table 3 (real-world, out of domain), one per task.
    "rrshid": ("dehaze", "test/ood/rrshid", "rrshid"),
    "gtrain": ("derain", "test/ood/gtrain", "gtrain"),
    "sidd": ("denoise", "test/ood/sidd", "sidd"),
    "reloblur": ("deblur", "test/ood/reloblur", "reloblur"),
    "lolistreet": ("lowlight", "test/ood/lolistreet", "lolistreet"),
}
OOD_SETS = ("rrshid", "gtrain", "sidd", "reloblur", "lolistreet")  # IRPO Table 3's column order
# Names that stand for several sets wherever set names are given (evaluate --sets, data.eval_sets).
SET_GROUPS: dict[str, tuple[str, ...]] = {"ood5": OOD_SETS}


def expand_set_names(names: Sequence[str]) -> list[str]:
    """``names`` with each group of :data:`SET_GROUPS` (``ood5``) replaced by its sets, in order,
    without duplicates."""
    out: list[str] = []
    for name in names:
        for n in SET_GROUPS.get(name, (name,)):
            if n not in out:
                out.append(n)
    return out
