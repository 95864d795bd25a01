"""The GPU check (`scripts/gpu-check`, `autolora gpu-check`): one prepared run that proves the
CUDA path end to end and measures the speed targets within a few minutes of a lent GPU.

- ``plan``: the steps in order of value, their time budgets and sizes (GPU and ``--dry-run``);
- ``runner``: runs them within the total budget, each in its own process (or inline);
- ``record``: what a step records (figures, checks, lines), saved after every change;
- ``environment``, ``correctness``, ``speed``: the steps; ``injected``: failures for tests;
- ``check``: one whole run and its output folder; ``report``: the files and the summary table;
- ``carry``: ``--prepare``, the packages the GPU machine lacks, ready to travel.

docs/performance.md ("The GPU check") says how to run it and what every figure means.
"""
