# Stage 1: photos in, checked and (optionally) downscaled, metadata tabulated.


rule ingest:
    message:
        "Ingesting the photos of {wildcards.scene}"
    input:
        unpack(get_ingest_inputs),
    output:
        images=directory("results/{scene}/ingest/images"),
        exif="results/{scene}/ingest/exif.csv",
        skipped="results/{scene}/ingest/skipped.csv",
    params:
        max_image_size=lambda wc: SCENES[wc.scene]["ingest"]["max_image_size"],
        min_images=lambda wc: SCENES[wc.scene]["ingest"]["min_images"],
        calibration=lambda wc: SCENES[wc.scene]["ingest"]["calibration"],
    threads: 2
    log:
        "logs/ingest/{scene}.log",
    benchmark:
        "benchmarks/ingest/{scene}.tsv"
    conda:
        "../envs/sfm.yaml"
    script:
        "../scripts/ingest.py"
