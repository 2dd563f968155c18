"""Dataset build: dedup, article-grouped split, decontamination, HF Parquet + card, exports."""
