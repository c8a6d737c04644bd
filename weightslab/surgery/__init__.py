"""Model surgery: editable layers, dependency tracing, and neuron-level edits.

Public names: :class:`NetworkWithOps`, :class:`Conv2dWithNeuronOps`,
:class:`LinearWithNeuronOps`, :class:`BatchNorm2dWithNeuronOps`,
:class:`MultiheadAttentionWithNeuronOps`, :class:`TrackingMode`, :func:`convert_to_ops`,
:class:`SurgeryPlan`.
"""

from weightslab.surgery.attention import MultiheadAttentionWithNeuronOps
from weightslab.surgery.convert import convert_to_ops
from weightslab.surgery.modules import BatchNorm2dWithNeuronOps, Conv2dWithNeuronOps, LinearWithNeuronOps
from weightslab.surgery.network import NetworkWithOps
from weightslab.surgery.plan import SurgeryPlan
from weightslab.surgery.tracking import TrackingMode

__all__ = [
    "BatchNorm2dWithNeuronOps",
    "Conv2dWithNeuronOps",
    "LinearWithNeuronOps",
    "MultiheadAttentionWithNeuronOps",
    "NetworkWithOps",
    "SurgeryPlan",
    "TrackingMode",
    "convert_to_ops",
]
