"""Evaluation harness for training-free segmentation with diffusion-model attention."""
__version__ = "0.1.0"
