"""Fairseq-free file formats: the TSV manifest, segment files and atomic writes.

* :mod:`~meg2vec_fairseq.io.atomic` -- writes that leave a file complete or absent,
* :mod:`~meg2vec_fairseq.io.manifest` -- the one reader and writer of ``{split}.tsv``,
* :mod:`~meg2vec_fairseq.io.segment_file` -- ``.npy`` segment header and value checks.
"""
