"""FFCV writers and loaders for deps."""
