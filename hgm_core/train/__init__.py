"""Training-side pieces: `hgm train` (`config`, `sample`, `trainer`, `validate`, `export`, `train_cli`),
evaluation metrics (`metrics`), LPIPS-VGG (`lpips`) and `hgm eval` (`eval_cli`)."""
