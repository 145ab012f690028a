# Stage 5: Gaussian-splat training, one job per partition (GPU on clusters, CPU path elsewhere).
# A killed job resumes from partitions/<pid>/ckpt/last.pt (not an output: Snakemake keeps it).


rule train:
    message:
        "Training {wildcards.scene} partition {wildcards.pid} (gpu={resources.gpu}, threads={threads}, mem_mb={resources.mem_mb})"
    input:
        manifest="results/{scene}/partitions/manifest.json",
    output:
        splats="results/{scene}/partitions/{pid}/splats.ply",
        metrics="results/{scene}/partitions/{pid}/metrics.json",
    params:
        pid=lambda wc: wc.pid,
        options=lambda wc: SCENES[wc.scene]["train"],
        # Per job, so switching it off re-runs only the partitions it failed (tests only).
        inject_failure=lambda wc: wc.pid in SCENES[wc.scene]["testing"]["fail_partitions"],
    threads: train_threads
    resources:
        # Grows with each retry (`retries` in the SLURM profile) after an out-of-memory kill.
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=720,
        gpu=train_gpus,
    log:
        "logs/train/{scene}/{pid}.log",
    benchmark:
        "benchmarks/train/{scene}/{pid}.tsv"
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/train.py"


use rule train as train_monolithic with:
    message:
        "Training {wildcards.scene} as one partition (quality reference)"
    # The reference usually trains alone once the partitions are done: two threads keep a 2-core
    # machine busy (the SLURM profile sets its own count).
    threads: 2
    output:
        splats="results/{scene}/monolithic/splats.ply",
        metrics="results/{scene}/monolithic/metrics.json",
    params:
        pid="monolithic",
        options=lambda wc: SCENES[wc.scene]["train"],
        inject_failure=lambda wc: "monolithic" in SCENES[wc.scene]["testing"]["fail_partitions"],
    log:
        "logs/train/{scene}/monolithic.log",
    benchmark:
        "benchmarks/train/{scene}/monolithic.tsv"
