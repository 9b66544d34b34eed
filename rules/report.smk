# report: one self-contained HTML file across pairs (plots embedded) and a summary table, also
# registered for `snakemake --report`.


rule report:
    input:
        report_inputs,
        suite=rules.suite.output.table,
        sensitivity=rules.suite.output.sensitivity,
        code=script_code("report"),
    output:
        html=report(
            f"{RESULTS}/report.html",
            caption="../report/report_html.rst",
            category="mneme",
        ),
        summary=report(
            f"{RESULTS}/summary.tsv",
            caption="../report/summary_tsv.rst",
            category="mneme",
        ),
    log:
        logs("report/report.log"),
    localrule: True
    conda:
        "../envs/mneme.yaml"
    params:
        files=report_files,
        meta=config["pairs"],
    script:
        "../workflow_scripts/report.py"
