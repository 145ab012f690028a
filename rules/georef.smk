# Stage 3: georeferencing to the delivery CRS; the model moves to the local frame.


rule georef:
    message:
        "Georeferencing {wildcards.scene}"
    input:
        unpack(get_georef_inputs),
    output:
        sparse=directory("results/{scene}/georef/sparse"),
        frame="results/{scene}/georef/frame.json",
    params:
        crs=lambda wc: SCENES[wc.scene]["crs"],
        options=lambda wc: SCENES[wc.scene]["georef"],
        scene_file=lambda wc: SCENES[wc.scene]["_file"],
    resources:
        mem_mb=4000,
    log:
        "logs/georef/{scene}.log",
    benchmark:
        "benchmarks/georef/{scene}.tsv"
    conda:
        "../envs/sfm.yaml"
    script:
        "../scripts/georef.py"
