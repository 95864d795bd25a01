# One job per cell: `autolora train` with the cell's spec from the grid. The spec is a param, so
# changing a cell's settings reruns that cell. Resume state lives in the cell's state/ folder,
# outside the declared outputs, so a failed or timed-out attempt never loses finished epochs:
# the retry (profile `retries`) continues from the last completed epoch.


rule train:
    input:
        data=f"{RESOURCES}/data/{{dataset}}",
        weights=f"{RESOURCES}/weights/{{arch}}-eps{{eps}}.safetensors",
    output:
        run=f"{CELL}/run.json",
        history=f"{CELL}/history.csv",
        checkpoints=expand(
            f"{CELL}/{{name}}.safetensors",
            name=train_checkpoints(config),
            allow_missing=True,
        ),
    log:
        f"{CELL}/train.log",
    conda:
        CONDA_ENV
    threads: 8
    resources:
        gpu=1,
        mem_mb=cell_mem_mb,
        runtime=train_runtime_min,
        slurm_extra=train_slurm_extra,
    params:
        spec=cell_spec_json,
        out_dir=lambda wildcards, output: os.path.dirname(output.run),
    shell:
        # The trap keeps this shell alive on SIGTERM so that `autolora train` (which gets the
        # signal too) can save its state and exit 75; its log is appended across attempts.
        "trap 'echo \"signal received: waiting for autolora train to save its state\" >&2' TERM; "
        "OMP_NUM_THREADS={threads} autolora train --spec {params.spec:q} "
        "--data {input.data} --weights {input.weights} --out {params.out_dir} >> {log} 2>&1"
