# SA, PGD-10 and AutoAttack of a cell's reported checkpoint (the protocol's selection).


rule evaluate:
    input:
        run=f"{CELL}/run.json",
        checkpoint=f"{CELL}/{{checkpoint}}.safetensors",
        data=f"{RESOURCES}/data/{{dataset}}",
    output:
        f"{CELL}/eval-{{checkpoint}}.json",
    log:
        f"{CELL}/eval-{{checkpoint}}.log",
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
