"""The Experiment: recorded training, checkpoints, lineage, replay."""

from weightslab.experiment.experiment import Experiment

__all__ = ["Experiment"]
