"""Data loading: datasets, a reproducible ``DataLoader``, array transforms, tokenizers and bundled
data (scikit-learn's digits, a character corpus from the Python standard library, the karate club
graph).

>>> import numpy as np
>>> from fastdl.data import TensorDataset, DataLoader, random_split
>>> ds = TensorDataset(np.zeros((10, 3), np.float32), np.arange(10))
>>> train, val = random_split(ds, [8, 2], seed=0)
>>> xb, yb = next(iter(DataLoader(train, batch_size=4, shuffle=True, seed=0)))
>>> tuple(xb.shape), tuple(yb.shape)
((4, 3), (4,))
"""
from . import transforms
from .dataset import ConcatDataset, Dataset, Subset, TensorDataset, random_split
from .datasets import CORPUS_FILES, CharCorpus, Graph, Splits, char_corpus, digits, karate_club
from .distributed import DistributedSampler
from .loader import DataLoader, collate_arrays, default_collate
from .seeding import WorkerInfo, get_worker_info, rng
from .text import CharTokenizer, SequenceDataset, SubwordTokenizer, words

__all__ = [
    "CORPUS_FILES", "CharCorpus", "CharTokenizer", "ConcatDataset", "DataLoader", "Dataset", "DistributedSampler",
    "Graph", "SequenceDataset", "Splits", "Subset", "SubwordTokenizer", "TensorDataset", "WorkerInfo",
    "char_corpus", "collate_arrays", "default_collate", "digits", "get_worker_info", "karate_club",
    "random_split", "rng", "transforms", "words",
]
