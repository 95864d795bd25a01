# Pre-trained backbones as safetensors under resources/weights/<arch>-eps<eps_pt>.safetensors:
# the Salman et al. (2020) robust ResNets (download on the submit host, verify, convert once, so
# no later job unpickles anything), or, for the demo, a tiny ResNet pre-trained here.


rule download_weights:
    output:
        layout.backbone_download(RESOURCES, "{arch}", "{eps}"),
    log:
        layout.resource_log(RESOURCES, "download_weights", "{arch}-eps{eps}"),
    wildcard_constraints:
        arch=_alternatives(vocabulary.PUBLISHED_ARCHS),
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        weights_lock=WEIGHTS_LOCK,
    shell:
        "autolora weights download --arch {wildcards.arch} --eps {wildcards.eps} "
        "--lock {resources.weights_lock:q} --dest {output:q} > {log:q} 2>&1"


rule convert_weights:
    input:
        rules.download_weights.output,
    output:
        layout.backbone(RESOURCES, "{arch}", "{eps}"),
    log:
        layout.resource_log(RESOURCES, "convert_weights", "{arch}-eps{eps}"),
    wildcard_constraints:
        arch=_alternatives(vocabulary.PUBLISHED_ARCHS),
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
        weights_lock=WEIGHTS_LOCK,
    shell:
        "autolora weights convert --src {input:q} --arch {wildcards.arch} --eps {wildcards.eps} "
        "--lock {resources.weights_lock:q} --out {output:q} > {log:q} 2>&1"


rule pretrain_backbone:
    output:
        layout.backbone(RESOURCES, "{arch}", "{eps}"),
    log:
        layout.resource_log(RESOURCES, "pretrain_backbone", "{arch}-eps{eps}"),
    wildcard_constraints:
        arch=_alternatives(vocabulary.PRETRAINED_HERE_ARCHS),
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        options=pretrain_options(),
    shell:
        "autolora pretrain --arch {wildcards.arch} --threads {threads} "
        "--eps {wildcards.eps} --out {output:q} {params.options} > {log:q} 2>&1"
