# SA, PGD-10 and AutoAttack of a cell's reported checkpoint (the protocol's selection).


rule evaluate:
    input:
        run=f"{CELL}/{layout.RUN_RECORD}",
        checkpoint=f"{CELL}/{layout.checkpoint_file('{checkpoint}')}",
        data=layout.prepared_dataset(RESOURCES, "{dataset}"),
    output:
        f"{CELL}/{layout.evaluation_record('{checkpoint}')}",
    log:
        f"{CELL}/{layout.evaluation_log('{checkpoint}')}",
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=cell_mem_mb,
        runtime=evaluate_runtime_min,
        autolora_runtime=runtime_json,
    params:
        run_dir=lambda wildcards, input: os.path.dirname(input.run),
        options=evaluation_options,
    shell:
        "OMP_NUM_THREADS={threads} autolora evaluate --run {params.run_dir:q} "
        "--data {input.data:q} --checkpoint {wildcards.checkpoint} {params.options} "
        "--runtime {resources.autolora_runtime:q} --out {output:q} > {log:q} 2>&1"
