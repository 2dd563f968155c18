"""verl reward file: ``custom_reward_function.path=<this file>``, ``custom_reward_function.name=compute_score``.

``compute_score(data_source, solution_str, ground_truth, extra_info=None) -> dict`` with
``score`` (accuracy + format), ``accuracy`` and ``format``; ``extra_info`` may carry the
``options`` list. Print this file's path with
``python -c "import openmedreason.train.verl_reward as m; print(m.__file__)"``.
"""

from openmedreason.train.rewards import verl_compute_score as compute_score

__all__ = ["compute_score"]
