# Pre-trained backbones as safetensors under resources/weights/<arch>-eps<eps_pt>.safetensors:
# the Salman et al. (2020) robust ResNets (download on the submit host, verify, convert once, so
# no later job unpickles anything), or, for the demo, a tiny ResNet pre-trained here.


rule download_weights:
    output:
        f"{RESOURCES}/downloads/weights/{{arch}}-eps{{eps}}.ckpt",
    log:
        f"{RESOURCES}/logs/download_weights/{{arch}}-eps{{eps}}.log",
    wildcard_constraints:
        arch=_alternatives(vocabulary.PUBLISHED_ARCHS),
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    shell:
        "autolora weights download --arch {wildcards.arch} --eps {wildcards.eps} "
        "--dest {output:q} > {log:q} 2>&1"


rule convert_weights:
    input:
        rules.download_weights.output,
    output:
        f"{RESOURCES}/weights/{{arch}}-eps{{eps}}.safetensors",
    log:
        f"{RESOURCES}/logs/convert_weights/{{arch}}-eps{{eps}}.log",
    wildcard_constraints:
        arch=_alternatives(vocabulary.PUBLISHED_ARCHS),
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    shell:
        "autolora weights convert --src {input:q} --arch {wildcards.arch} --eps {wildcards.eps} "
        "--out {output:q} > {log:q} 2>&1"


rule pretrain_backbone:
    output:
        f"{RESOURCES}/weights/{{arch}}-eps{{eps}}.safetensors",
    log:
        f"{RESOURCES}/logs/pretrain_backbone/{{arch}}-eps{{eps}}.log",
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
