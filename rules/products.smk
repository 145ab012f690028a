# Stage 7: GIS products. One `products` job per partition cell (the same {pid} as training: memory
# bounded by the cell), then one `mosaic` that pastes the cells' tiles into the scene's products.
# Deleting one cell's tiles re-runs that cell and the mosaic only.


rule products:
    message:
        "GIS products of {wildcards.scene} cell {wildcards.pid} (gpu={resources.gpu})"
    input:
        manifest="results/{scene}/partitions/manifest.json",
        splats="results/{scene}/merged/splats.ply",
        # evaluate renders every training view's median depth from the merged model: the fusion's input
        metrics="results/{scene}/merged/metrics.json",
    output:
        **cell_outputs("results/{scene}/products/{pid}"),
    params:
        pid=lambda wc: wc.pid,
        depth=lambda wc: f"results/{wc.scene}/merged/depth",
        options=lambda wc: SCENES[wc.scene]["products"],
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=120,
        # Rendering uses the GPU where training did; the CPU rasterizer otherwise.
        gpu=train_gpus,
    log:
        "logs/products/{scene}/{pid}.log",
    benchmark:
        "benchmarks/products/{scene}/{pid}.tsv"
    conda:
        "../envs/gis.yaml"
    script:
        "../scripts/products.py"


rule mosaic:
    message:
        "Mosaicking the GIS products of {wildcards.scene}"
    input:
        unpack(get_mosaic_inputs),
    output:
        **product_outputs("results/{scene}/products"),
    params:
        options=lambda wc: SCENES[wc.scene]["products"],
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
    log:
        "logs/mosaic/{scene}.log",
    benchmark:
        "benchmarks/mosaic/{scene}.tsv"
    conda:
        "../envs/gis.yaml"
    script:
        "../scripts/mosaic.py"
