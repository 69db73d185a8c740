"""Training and evaluation: python -m birefnet_core.train (fine-tuning), metrics, synthetic data."""
