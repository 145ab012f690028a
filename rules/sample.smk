# The built-in sample scene: generated, not downloaded.


rule generate_scene:
    message:
        "Generating the procedural scene {wildcards.scene} (photos with EXIF, GCPs, ground truth)"
    input:
        recipe=lambda wc: SCENES[wc.scene]["generate"],
    output:
        images=directory("results/{scene}/synthetic/images"),
        truth=directory("results/{scene}/synthetic/truth"),
        gcp_list="results/{scene}/synthetic/gcp_list.txt",
    log:
        "logs/generate_scene/{scene}.log",
    benchmark:
        "benchmarks/generate_scene/{scene}.tsv"
    conda:
        "../envs/sfm.yaml"
    script:
        "../scripts/generate_scene.py"
