# Prepared datasets under resources/data/<dataset>/ (format: docs/internals.md). Real datasets are
# downloaded on the submit host (compute nodes often have no internet), checksum-verified and
# prepared once; synthetic ones are generated. The prepared folder is written beside its final
# name and moved into place whole; cells only read it.


rule download_dataset:
    output:
        directory(layout.dataset_downloads(RESOURCES, "{dataset}")),
    log:
        layout.resource_log(RESOURCES, "download_dataset", "{dataset}"),
    wildcard_constraints:
        dataset=_alternatives(REAL_DATASETS),
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        weights_lock=WEIGHTS_LOCK,
    params:
        # Partial and finished archives wait here, outside the output folder that Snakemake
        # deletes when the job fails, so a retry resumes instead of starting over.
        staging=lambda wildcards: layout.dataset_staging(RESOURCES, wildcards.dataset),
    shell:
        "autolora data download --dataset {wildcards.dataset} --dest {output:q} "
        "--staging {params.staging:q} --lock {resources.weights_lock:q} > {log:q} 2>&1"


rule prepare_dataset:
    input:
        rules.download_dataset.output,
    output:
        directory(layout.prepared_dataset(RESOURCES, "{dataset}")),
    log:
        layout.resource_log(RESOURCES, "prepare_dataset", "{dataset}"),
    wildcard_constraints:
        dataset=_alternatives(REAL_DATASETS),
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=16000,
        runtime=120,
        weights_lock=WEIGHTS_LOCK,
    shell:
        "autolora data prepare --dataset {wildcards.dataset} --source {input:q} "
        "--lock {resources.weights_lock:q} --out {output:q} > {log:q} 2>&1"


rule synthesize_dataset:
    output:
        directory(layout.prepared_dataset(RESOURCES, "{dataset}")),
    log:
        layout.resource_log(RESOURCES, "synthesize_dataset", "{dataset}"),
    wildcard_constraints:
        dataset=_alternatives(SYNTHETIC_DATASETS),
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        options=synthetic_options,
    shell:
        "autolora data synthesize --out {output:q} {params.options} > {log:q} 2>&1"
