"""Training recipes on TRL (SFT, GRPO) with rewards shared with evaluation."""
