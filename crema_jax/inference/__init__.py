"""Inference: a checkpoint applied to ECGs. `backbones` (a checkpoint as a jitted function over
evaluation batches, for every model family), `embed` (features or logits of records or arrays),
`predict` (ECGFounder's label probabilities)."""
