# Stage 8: the QGIS project that opens every product (QGIS's own Python: the system's, or
# envs/qgis.yaml on a cluster), and the report.


rule qgis_project:
    message:
        "Writing the QGIS project of {wildcards.scene}"
    input:
        unpack(get_qgis_inputs),
    output:
        qgz="results/{scene}/report/{scene}.qgz",
        map=report("results/{scene}/report/map.png", caption="../workflow/report/map.rst", category="Products"),
        summary="results/{scene}/report/qgis_project.json",
        cameras="results/{scene}/report/cameras.gpkg",
        ept=directory("results/{scene}/report/ept"),
    params:
        results_dir=lambda wc, output: str(Path(output.qgz).parents[2]),
        qgis_python=config.get("qgis_python"),
    resources:
        mem_mb=4000,
    log:
        "logs/qgis_project/{scene}.log",
    benchmark:
        "benchmarks/qgis_project/{scene}.tsv"
    conda:
        "../envs/qgis.yaml"
    script:
        "../scripts/qgis_project.py"


rule report:
    message:
        "Writing the report of {wildcards.scene}"
    input:
        unpack(get_report_inputs),
    output:
        metrics="results/{scene}/report/metrics.json",
        html=report("results/{scene}/report/report.html", caption="../workflow/report/report.rst",
                    category="Quality report"),
    params:
        results_dir=lambda wc, output: str(Path(output.metrics).parents[2]),
        benchmarks_dir="benchmarks",
        logs_dir="logs",
    # Where QGIS is missing the project job fails (saying what to install): the report goes first.
    priority: 10
    log:
        "logs/report/{scene}.log",
    benchmark:
        "benchmarks/report/{scene}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/report.py"
