"""The data layer: records -> indexes -> reading -> signal processing -> Grain pipeline ->
cache. Imports only crema_jax.runtime; knows nothing of models.

- index/     dataset layouts: which records a dataset holds, with labels, splits, sources
- reading/   one record of any stored format -> the canonical 12-lead Ecg (ecg.py)
- signal/    resampling, preprocessing filters, augmentations
- pipeline/  record sources, the Grain pipelines, masking, the batch contract
- cache/     the preprocessed ArrayRecord cache and `crema-jax prepare`
- presets.py the data paths (crema, stmem, ecgfounder) and their preprocessing
- config.py  the config.data section
"""
