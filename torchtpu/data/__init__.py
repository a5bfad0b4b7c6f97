"""The input pipeline: batches from any loader, already on the device when the step asks.

``loader.py`` holds :class:`DeviceLoader`: a background thread copies each
batch to the device while the previous step runs, and its ``state_dict()``
resumes an epoch mid-way with the same batches, bit for bit.
"""

from torchtpu.data.loader import DeviceLoader

__all__ = ["DeviceLoader"]
