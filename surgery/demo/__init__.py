"""`surgery demo`: LoRA fine-tuning of a pretrained MiniLM, end to end (run.py), on a small committed dataset (dataset.py)."""
