"""WeightsLab: edit a running PyTorch experiment, keep a replayable SQL history."""

__version__ = "0.1.0"
