# Reproduction of AutoLoRa (ICLR 2024) and its baselines: the grid of training cells, their
# evaluations, and every table, figure and report built from them. The science is in the
# `autolora` package; rules only call its command line.
#
#   snakemake --profile slurm                      # the paper's grid (config/config.yaml) on SLURM
#   snakemake --cores 2 --configfile config/demo.yaml   # the offline demo (`make demo`)
from snakemake.utils import min_version

min_version("8.20")


# config/config.yaml is the default; a --configfile replaces it instead of being merged into it,
# so a demo or subset config never inherits the paper's tables.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/crate.smk"


# The evaluations are targets too, so that a deleted or failed one is redone (and the
# aggregation after it) even while the tables exist. The RO-Crate describes the finished folder.
rule all:
    default_target: True
    input:
        rules.aggregate.output,
        rules.crate.output,
        cell_evaluations(),
    localrule: True
