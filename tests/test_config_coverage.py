"""Every ``mining.*``, ``grpo.*`` and ``train.*`` setting has a test that changes it and observes
its effect: a value that a code path ignores (reads the default, or nothing) is a bug no other
test sees. ``COVERED`` names that test for each key.

A key added to ``config_lib.base_config`` without an entry here fails
:func:`test_every_key_names_the_test_that_changes_it`; an entry whose test is gone (renamed,
deleted) or whose file never mentions the key fails :func:`test_each_named_test_exists`. That a
named test really changes the value and looks at the effect is the reviewer's part: each entry
says how, and each of those tests failed on a copy of the code that ignored the value (issue 28).
"""

import ast
import pathlib

import pytest

from irpo_jax import config_lib

TESTS = pathlib.Path(__file__).resolve().parent
SECTIONS = ("mining", "grpo", "train")

# key -> (test file::test function, how it changes the key and what it observes)
COVERED = {
    # mining.*: the run's own mining (irpo_jax.training.hard_set)
    "mining.fraction": ("test_hard_set.py::test_the_runs_mining_follows_the_mining_settings",
                        "0.5: half of the pairs selected, the worst by an independent sort"),
    "mining.selection": ("test_hard_set.py::test_the_runs_mining_follows_the_mining_settings",
                         "global: one ranking over both tasks (differs from per task in that data)"),
    "mining.rank_by": ("test_hard_set.py::test_the_runs_mining_follows_the_mining_settings",
                       "ssim: the lowest SSIMs selected (differs from the lowest PSNRs there)"),
    "mining.crop": ("test_hard_set.py::test_the_runs_mining_follows_the_mining_settings",
                    "48: the model sees 48 x 48 inputs"),
    "mining.batch_size": ("test_hard_set.py::test_the_runs_mining_follows_the_mining_settings",
                          "3: forwards of 4 images (rounded up to the 2 devices)"),
    "mining.allow_other_model": ("test_hard_set.py::test_every_pair_opts_out_and_other_manifests_are_checked",
                                 "True: another model's manifest accepted, refused without it"),
    # grpo.*: the update against the paper's equations, the plan, the data
    "grpo.group_size": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                        "3 (default 4): rollouts and advantages per image"),
    "grpo.clip_eps": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                      "0.25 (default 0.2): the clipped surrogate of rollouts sampled by other parameters"),
    "grpo.kl_coef": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                     "0.2 (default 0.04): the KL term's weight in L_RL and its gradient"),
    "grpo.kl_estimator": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                          "analytic: the closed-form Beta KL"),
    "grpo.entropy_coef": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                          "0.05 (default 0.01): the entropy bonus"),
    "grpo.adv_eps": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                     "1e-4 (default 1e-8): the advantages' denominator"),
    "grpo.adv_scale": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                       "batch: one pooled std"),
    "grpo.aggregation": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                         "normalize_then_sum: per-component advantages"),
    "grpo.policy_iters": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                          "2: the ratio uses the stored log-probs (also the plan's steps: test_hard_set's "
                          "test_the_plan_follows_policy_iterations_and_states_the_last_steps_learning_rate)"),
    "grpo.one_step_stale": ("test_train.py::test_stale_grpo_ratio_uses_the_sampling_log_probs",
                            "True: the update's ratio moves off 1 (the previous step's rollouts)"),
    "grpo.lambda_sup": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                        "(0.45, 0.15) (default (0.35, 0.1)): L_sup's annealed weight"),
    "grpo.lambda_cons": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                         "(0.3, 0.04) (default (0.2, 0.05)): L_cons's annealed weight"),
    "grpo.rl_updates_backbone": (
        "test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
        "True: L_RL's gradient reaches the backbone (fresh rollouts too)"),
    "grpo.supervise_best_only": ("test_grpo_update.py::test_shortcut_updates_equal_the_update_through_all_rollouts",
                                 "False: the backbone losses through all G decoders (more products, same step)"),
    "grpo.reuse_head_inputs": ("test_grpo_update.py::test_shortcut_updates_equal_the_update_through_all_rollouts",
                               "False: the teacher-forced log-probs (more products, same step)"),
    "grpo.task_repeats": ("test_hard_set.py::test_task_repeats_switch_sets_what_an_epoch_is",
                          "False: every pair once per epoch"),
    "grpo.cons_target": ("test_grpo_reconstruction.py::test_update_equals_the_reconstruction_from_the_equations",
                         "det_anchor: y_det is a constant target of L_cons"),
    # train.*: the loop
    "train.stage": ("test_train.py::test_grpo_stage_logs_the_design_metrics",
                    "grpo: a policy trained with the GRPO metrics (supervised: test_supervised_stage)"),
    "train.steps": ("test_train.py::test_zero_intervals_mean_only_at_the_end_and_a_finished_run_keeps_its_summary",
                    "2: the run ends after 2 steps"),
    "train.epochs": (
        "test_hard_set.py::test_the_plan_follows_policy_iterations_and_states_the_last_steps_learning_rate",
        "3: the run's optimizer steps"),
    "train.batch_size": (
        "test_hard_set.py::test_the_plan_follows_policy_iterations_and_states_the_last_steps_learning_rate",
        "5: the steps of an epoch (and a batch of 1 on 2 devices is refused: test_run_start)"),
    "train.log_every": ("test_train.py::test_zero_intervals_mean_only_at_the_end_and_a_finished_run_keeps_its_summary",
                        "0: only the last step logged"),
    "train.checkpoint_every": ("test_crash_recovery.py::test_a_resumed_run_logs_each_step_once",
                               "1: checkpoints 1 and 2 before the kill at 3"),
    "train.keep_checkpoints": ("test_crash_recovery.py::test_a_resumed_run_logs_each_step_once",
                               "2: checkpoints 2 and 3 kept at the end"),
    "train.panel_every": ("test_train.py::test_stale_grpo_ratio_uses_the_sampling_log_probs",
                          "2: an image panel in the event files"),
    "train.eval_every": ("test_train.py::test_periodic_evaluations_and_their_image_limit",
                         "2: an evaluation at step 2 besides the end's"),
    "train.probe_every": ("test_train.py::test_reward_probe_scores_fixed_batches_with_fixed_keys",
                          "2: probes at steps 0, 2, 4"),
    "train.probe_batches": ("test_train.py::test_reward_probe_scores_fixed_batches_with_fixed_keys",
                            "1: the step-0 probe is one batch's mean reward, rebuilt independently"),
    "train.eval_max_images": ("test_train.py::test_periodic_evaluations_and_their_image_limit",
                              "2: two of each set's three images"),
    "train.eval_at_end": ("test_run_start.py::test_a_test_set_with_a_missing_target_stops_the_run_before_training",
                          "True: the test sets are checked at the start; False: the run goes on"),
    "train.allow_config_change": ("test_workdir.py::test_a_saved_run_refuses_a_changed_config_unless_allowed",
                                  "True: a changed config resumes, the previous one kept"),
    "train.compilation_cache": ("test_run_start.py::test_train_compilation_cache_is_the_runs_cache",
                                "a path: JAX's cache directory; '': left alone"),
    "train.devices": ("test_run_start.py::test_train_devices_chooses_the_mesh",
                      "1: a one-device mesh (one image per step accepted)"),
}  # fmt: skip
# Values set by a fixture of another file (conftest.py) rather than in the test's file.
SET_IN = {"grpo.one_step_stale": "conftest.py::stale_run", "train.panel_every": "conftest.py::stale_run"}


def _keys() -> set[str]:
    cfg = config_lib.base_config("grpo")
    return {f"{section}.{key}" for section in SECTIONS for key in cfg[section]}


def test_every_key_names_the_test_that_changes_it():
    keys = _keys()
    missing, stale = sorted(keys - set(COVERED)), sorted(set(COVERED) - keys)
    assert not missing, (
        f"config keys without a test that changes them: {missing}. Write one (set the key to a "
        "value other than its default and check what it changes) and name it in COVERED."
    )
    assert not stale, f"COVERED names keys the config no longer has: {stale}"


def _function(where: str) -> str:
    """The source of the test (or fixture) ``file::function`` under tests/; fails naming what is missing."""
    file, _, name = where.partition("::")
    path = TESTS / file
    assert path.is_file(), f"{file} does not exist"
    source = path.read_text()
    found = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert found, f"{file} has no function {name}"
    return ast.get_source_segment(source, found[0])


@pytest.mark.parametrize("key", sorted(COVERED))
def test_each_named_test_exists(key):
    where, how = COVERED[key]
    _function(where)
    setter = SET_IN.get(key, where)
    _function(setter)
    file = setter.partition("::")[0]
    leaf = key.split(".")[1]
    assert leaf in (TESTS / file).read_text(), f"{key}: {file}, where {where} gets its value, never mentions {leaf!r}"
    assert how, key
