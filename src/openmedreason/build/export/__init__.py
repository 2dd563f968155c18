"""Exports of a built dataset to training and evaluation frameworks (``omr export``)."""
