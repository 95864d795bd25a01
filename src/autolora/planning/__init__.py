"""The planning layer, torch-free: what the paper's nouns are (``vocabulary``), where every file
lives (``layout``), the protocols, a cell's resolved configuration (``cells``), the workflow's grid
of cells (``grid``) and what they cost (``costmodel``). Snakemake imports it while it builds the
DAG, so nothing here may import torch.
"""
