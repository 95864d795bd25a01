# One job per cell: `autolora train` with the cell's identity (its spec from the grid) as a param,
# so that changing what defines a cell retrains exactly that cell, and the runtime (device,
# workers, fast paths) as a resource, so that changing how cells are computed retrains none.
# Everything a cell keeps across attempts lives in its folder outside the declared outputs:
# state/ (resume state: a failed or timed-out attempt never loses finished epochs), completed/
# (the finished run's outputs, of which the declared ones are hard links: a retry after a late
# failure restores them in seconds), logs/ (one log per attempt) and the lock of its trainer.


rule train:
    input:
        data=layout.prepared_dataset(RESOURCES, "{dataset}"),
        weights=layout.backbone(RESOURCES, "{arch}", "{eps}"),
    output:
        run=f"{CELL}/{layout.RUN_RECORD}",
        history=f"{CELL}/{layout.HISTORY}",
        checkpoints=[
            f"{CELL}/{layout.checkpoint_file(name)}"
            for name in grid.train_checkpoints(config)
        ],
    log:
        f"{CELL}/{layout.TRAIN_LOG}",
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=cell_mem_mb,
        runtime=train_runtime_min,
        slurm_extra=train_slurm_extra,
        autolora_runtime=runtime_json,
        weights_lock=WEIGHTS_LOCK,
    params:
        spec=cell_spec_json,
        out_dir=lambda wildcards, output: os.path.dirname(output.run),
    shell:
        # The trap keeps this shell alive on SIGTERM so that `autolora train` (which gets the
        # signal too) can save its state and exit 75. This log is the latest attempt's; every
        # attempt's own log stays in the cell's logs/.
        "trap 'echo \"signal received: waiting for autolora train to save its state\" >&2' TERM; "
        "OMP_NUM_THREADS={threads} autolora train --spec {params.spec:q} "
        "--runtime {resources.autolora_runtime:q} --data {input.data:q} "
        "--weights {input.weights:q} --lock {resources.weights_lock:q} "
        "--out {params.out_dir:q} > {log:q} 2>&1"
