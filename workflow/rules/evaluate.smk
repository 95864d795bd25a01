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
    threads: 4
    resources:
        gpu=1,
        mem_mb=cell_mem_mb,
        runtime=evaluate_runtime_min,
    params:
        run_dir=lambda wildcards, input: os.path.dirname(input.run),
        options=evaluation_options,
    shell:
        "OMP_NUM_THREADS={threads} autolora evaluate --run {params.run_dir} "
        "--data {input.data} --checkpoint {wildcards.checkpoint} {params.options} "
        "--out {output} > {log} 2>&1"
