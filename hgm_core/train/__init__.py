"""Training-side pieces: evaluation metrics (`metrics`), LPIPS-VGG (`lpips`) and `hgm eval` (`eval_cli`)."""
