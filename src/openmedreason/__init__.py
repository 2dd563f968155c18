"""OpenMedReason: medical VQA corpora with reasoning traces grounded in open-access articles."""

__version__ = "0.1.0"
