"""The reporting layer: tables, statistics, the paper comparison, figures, the reproduction report,
the provenance index and audit, and the RO-Crate. It reads records and writes reports; it imports
no training or evaluation code (``autolora.recompute``, which re-evaluates, lives outside it).
"""
