"""AutoLoRa reproducibility workflow: the science package."""

__version__ = "0.1.0"
