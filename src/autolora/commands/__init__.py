"""One module per `autolora` verb.

Each module defines ``NAME`` (the verb), ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules import torch lazily inside ``run`` so that ``autolora --help`` and the
torch-free verbs start fast.
"""
