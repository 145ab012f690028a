# Stage 2: structure from motion (pycolmap, CPU SIFT).


rule sfm:
    message:
        "SfM of {wildcards.scene}: SIFT, matching, mapping"
    input:
        images=rules.ingest.output.images,
        exif=rules.ingest.output.exif,
    output:
        sparse=directory("results/{scene}/sfm/sparse"),
        report="results/{scene}/sfm/report.json",
        database="results/{scene}/sfm/database.db",
    params:
        options=lambda wc: SCENES[wc.scene]["sfm"],
    threads: 8
    resources:
        mem_mb=8000,
    log:
        "logs/sfm/{scene}.log",
    benchmark:
        "benchmarks/sfm/{scene}.tsv"
    conda:
        "../envs/sfm.yaml"
    script:
        "../scripts/sfm.py"
