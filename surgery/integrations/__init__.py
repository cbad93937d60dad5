"""Integrations with the training ecosystem: transformers' Trainer (trainer.py), torch.distributed (distributed.py).

Imported on demand (`from surgery.integrations.trainer import SurgeryTrainer`): `import surgery` stays light.
"""
