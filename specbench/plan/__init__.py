"""Planning GPU jobs: peak memory per rank, traced from the real code at real shapes; host
memory and hours from stated formulas; the SLURM profile's resources written from them.

:mod:`.memory` (``train_group``), :mod:`.jobs` (``evaluate_draft``, HF generation,
``features_*``), :mod:`.trace` (the tracer), :mod:`.cost` (hours), :mod:`.host` (host
memory), :mod:`.profile` (the profile's ``mem_mb`` / ``runtime``), :mod:`.tables` and
``__main__`` (the tables and refusals), :mod:`.shapes` (the targets' configs).
"""
