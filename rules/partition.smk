# Stage 4: spatial partitioning. A checkpoint: how many partitions there are is known only now.


checkpoint partition:
    message:
        "Partitioning {wildcards.scene} into ground cells"
    input:
        sparse="results/{scene}/georef/sparse",
        frame="results/{scene}/georef/frame.json",
        images="results/{scene}/ingest/images",
    output:
        manifest="results/{scene}/partitions/manifest.json",
        points="results/{scene}/partitions/points.npz",
        images=directory("results/{scene}/partitions/images"),
    params:
        options=lambda wc: SCENES[wc.scene]["partition"],
        monolithic=lambda wc: SCENES[wc.scene]["evaluate"]["compare_monolithic"],
    resources:
        mem_mb=4000,
    log:
        "logs/partition/{scene}.log",
    benchmark:
        "benchmarks/partition/{scene}.tsv"
    conda:
        "../envs/sfm.yaml"
    script:
        "../scripts/partition.py"
