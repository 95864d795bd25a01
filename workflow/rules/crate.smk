# The results folder as a Workflow Run RO-Crate (`autolora crate`, layout in src/autolora/reporting/crate/):
# ro-crate-metadata.json and source/, a copy of this workflow's definition. Cheap: records and
# small files are read and hashed; checkpoints and prepared data are referenced by the sha256 the
# records claim. `autolora crate <folder> --zip` makes the deposit archive by hand.


rule crate:
    input:
        rules.aggregate.output,
        paper=PAPER_RESULTS,
    output:
        metadata=f"{REPORT}/{layout.CRATE_METADATA}",
        source=directory(f"{REPORT}/{layout.CRATE_SOURCE_DIR}"),
    log:
        f"{REPORT}/{layout.CRATE_LOG}",
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    params:
        folder=lambda wildcards, output: os.path.dirname(output.metadata),
        workflow_dir=workflow.basedir,
        configfiles=crate_configfile_options(),
    shell:
        "autolora crate {params.folder:q} --workflow-dir {params.workflow_dir:q} "
        "{params.configfiles} --paper {input.paper:q} > {log:q} 2>&1"
