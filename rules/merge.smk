# Stage 6: merge the partitions (each cropped to its own cell) and evaluate on held-out photos.


rule merge:
    message:
        "Merging the partitions of {wildcards.scene}"
    input:
        manifest="results/{scene}/partitions/manifest.json",
        frame="results/{scene}/georef/frame.json",
        splats=get_partition_splats,
    output:
        splats="results/{scene}/merged/splats.ply",
        frame="results/{scene}/merged/frame.json",
        report="results/{scene}/merged/merge.json",
    resources:
        mem_mb=8000,
    log:
        "logs/merge/{scene}.log",
    benchmark:
        "benchmarks/merge/{scene}.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/merge.py"


rule evaluate:
    message:
        "Scoring {wildcards.scene} on its held-out photos"
    input:
        unpack(get_evaluate_inputs),
    output:
        metrics="results/{scene}/merged/metrics.json",
        renders=directory("results/{scene}/merged/heldout"),
        depth=directory("results/{scene}/merged/depth"),
    params:
        options=lambda wc: SCENES[wc.scene]["train"],
    threads: 2
    resources:
        mem_mb=8000,
    log:
        "logs/evaluate/{scene}.log",
    benchmark:
        "benchmarks/evaluate/{scene}.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/evaluate.py"
