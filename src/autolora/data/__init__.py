"""Datasets: the prepared on-disk format, real sources, synthetic data, transforms and loaders.

Import the submodules directly (``autolora.data.prepared``, ``autolora.data.loaders``, ...): this
package module stays empty so that importing one piece never pulls in torch.
"""
