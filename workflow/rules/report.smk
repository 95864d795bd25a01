# `autolora aggregate` (file names in autolora.planning.layout): tables (CSV, Markdown,
# LaTeX), p-values, figures, the paper comparison and its claims, the provenance index read by
# `autolora audit`, the missing cells, and the reproduction report.


rule resolve_config:
    output:
        f"{REPORT}/{layout.RESOLVED_CONFIG}",
    log:
        f"{REPORT}/{layout.report_log('resolve_config')}",
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    params:
        # JSON is YAML. A change of any setting that can change a number reruns the aggregation;
        # the runtime and the cost model cannot (grid.result_config), and are left out.
        config=json.dumps(grid.result_config(config), sort_keys=True),
    shell:
        "printf '%s\\n' {params.config:q} > {output:q} 2> {log:q}"


rule aggregate:
    input:
        config=rules.resolve_config.output,
        paper=PAPER_RESULTS,
        evaluations=cell_evaluations(),
        histories=cell_histories(),
    output:
        tables=report(
            directory(f"{REPORT}/{layout.TABLES_DIR}"),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{name}"},
        ),
        figures=report(
            directory(f"{REPORT}/{layout.FIGURES_DIR}"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
        provenance=directory(f"{REPORT}/{layout.PROVENANCE_DIR}"),
        comparison=report(
            f"{REPORT}/{layout.COMPARISON_CSV}",
            caption="../report/comparison.rst",
            category="Paper vs. reproduction",
            labels={"document": "numbers"},
        ),
        claims=report(
            f"{REPORT}/{layout.CLAIMS}",
            caption="../report/claims.rst",
            category="Paper vs. reproduction",
            labels={"document": "claims"},
        ),
        missing=f"{REPORT}/{layout.MISSING_CELLS}",
        markdown=f"{REPORT}/{layout.REPORT_MD}",
        html=report(
            f"{REPORT}/{layout.REPORT_HTML}",
            caption="../report/reproduction.rst",
            category="Reproduction report",
            labels={"document": "paper vs. reproduction"},
        ),
    log:
        f"{REPORT}/{layout.report_log('aggregate')}",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        # results/<protocol>/config.resolved.yaml -> results, results/<protocol>
        results=lambda wildcards, input: os.path.dirname(
            os.path.dirname(input.config[0])
        ),
        out_dir=lambda wildcards, input: os.path.dirname(input.config[0]),
    shell:
        "autolora aggregate --config {input.config:q} --results {params.results:q} "
        "--paper {input.paper:q} --out {params.out_dir:q} > {log:q} 2>&1"
