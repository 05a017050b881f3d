"""Preprocessing library: raw MEG -> ``.npy`` segments + fairseq TSV manifests.

Plain NumPy/SciPy/MNE code; the command lines in ``tools/`` are thin wrappers around it.
"""
