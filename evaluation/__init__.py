"""Measurements of encoders and defenses: the linear probes and the linear-evaluation commands'
library (``probe``), and the training-free measurements of detection and proof of work behind
``measure_defenses.py`` (``defenses``)."""
