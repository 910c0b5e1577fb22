"""The block drafter has no checkpoint format: no engine or reference loads it as it is."""

from specbench.formats.registry import refuse_format

refuse_format(
    "block_diffusion",
    "*",
    "no format is implemented for the block drafter, and no engine or reference loads it "
    "as it is: DFlash checkpoints (z-lab DFlash, SpecForge 0.2.0 DFlashDraftModel, "
    "speculators 'dflash', which vLLM and SGLang serve) read one target layer per draft "
    "layer as context and embed MASK with the target's frozen embedding of a mask token; "
    "specbench's block drafter fuses four cached target layers into one context and "
    "learns its MASK vector, so no renaming gives the same model",
    loaded_by="none: DFlash checkpoints (z-lab, SpecForge `DFlashDraftModel`, speculators "
    "`dflash`) read one target layer per draft layer and a frozen mask-token embedding; ours "
    "fuses four cached layers and learns MASK, so no renaming gives the same model (the error "
    "says so)",
)
