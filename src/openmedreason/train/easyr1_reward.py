"""EasyR1 reward file: ``worker.reward.reward_function=<this file>:compute_score``.

Batch mode (``REWARD_TYPE = "batch"``): inputs ``{response, response_length, ground_truth}``,
outputs ``{overall, format, accuracy}``. ``ground_truth`` is the gold letter or a JSON string
``{"letter": "B", "options": [...]}`` (the export packs it so; EasyR1 passes no other column).
Print this file's path with ``python -c "import openmedreason.train.easyr1_reward as m; print(m.__file__)"``.
"""

from openmedreason.train.rewards import REWARD_TYPE, easyr1_compute_score as compute_score

__all__ = ["REWARD_TYPE", "compute_score"]
