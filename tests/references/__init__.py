"""Independent PyTorch references (ST-MEM, ECGFounder) that the tests compare crema_jax with."""
