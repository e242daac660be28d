"""yoloprof: measure and tune multi-GPU Ultralytics YOLO training."""

__version__ = "0.1.0"
