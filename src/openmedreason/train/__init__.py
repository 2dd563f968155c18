"""Training recipes on TRL (SFT, GRPO) with rewards shared with evaluation.

Modules: :mod:`~openmedreason.train.config` (recipes, no torch), :mod:`~openmedreason.train.data`
(sources, mixing, length guard), :mod:`~openmedreason.train.rewards` (format / accuracy / length
rewards and the TRL, EasyR1 and verl adapters, no torch), :mod:`~openmedreason.train.sft`,
:mod:`~openmedreason.train.grpo`, :mod:`~openmedreason.train.merge`. Guide: docs/training.md.
"""
