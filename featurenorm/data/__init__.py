"""Datasets, transforms, loaders and the jigsaw puzzle."""
