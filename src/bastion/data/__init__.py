"""Datasets: loading (one way for every command), and later poisoning and PII checks."""

from bastion.data.dataset import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset"]
