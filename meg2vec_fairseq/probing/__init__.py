"""Linear probing and fine-tuning of frozen features: do they make labels linearly decodable?

Notes
-----
One code path for every feature source, so the comparison is fair. One module per step:

* :mod:`~meg2vec_fairseq.probing.windows` -- labelled windows of preprocessed MEG: a manifest
  plus a labels TSV, split into train / valid / test;
* :mod:`~meg2vec_fairseq.probing.libribrain_labels` -- LibriBrain speech / phoneme windows
  through pnpl, with pnpl's partitions;
* :mod:`~meg2vec_fairseq.probing.sources` -- feature sources that map a batch of windows to
  frames ``(B, T', D)`` and each frame's sample position: the raw sensors, a checkpoint, or the
  same architecture with fresh weights (config -> model);
* :mod:`~meg2vec_fairseq.probing.pooling` -- frames whose centre lies in the labelled span,
  pooled (mean, or mean and std) into one vector per window;
* :mod:`~meg2vec_fairseq.probing.classifier` -- per seed, a stratified training subset,
  standardised features and a class-weighted logistic regression per ``C``, picked on valid and
  scored once on test;
* :mod:`~meg2vec_fairseq.probing.metrics` -- macro-F1 (the LibriBrain competition metric),
  balanced accuracy and their chance levels;
* :mod:`~meg2vec_fairseq.probing.report` -- the table, the JSON file and the figure;
* :mod:`~meg2vec_fairseq.probing.run` -- the loop over sources and seeds (``run_probe``) and the
  driver of ``tools/probe.py`` (``probe``);
* :mod:`~meg2vec_fairseq.probing.finetune` -- the encoder fine-tuned with a linear head on the
  same windows, for comparison.

Importing the package, and probing the raw sensors, imports neither torch nor fairseq; the
model sources and fine-tuning import them when used.
"""
