"""Installable fairseq plugin: wav2vec 2.0 pre-training for multi-channel MEG.

fairseq itself is deliberately *not* a hard requirement: the only fairseq build
that imports on Python 3.11 (``ve-fairseq==0.12.3``) declares a torchaudio
dependency that cannot load beside a CPU torch. ``make venv`` installs it with
``--no-deps``; install this package the same way (see the README).
"""

from setuptools import find_packages, setup

setup(
    name="meg2vec-fairseq",
    version="0.1.0",
    description="fairseq plugin: wav2vec 2.0 self-supervised pre-training on MEG",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["meg2vec_fairseq", "meg2vec_fairseq.*"]),
    install_requires=[
        "torch",
        "numpy",
        "scipy",
        "soundfile",
        "omegaconf",
        "hydra-core",
        "mne",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "fairseq": ["ve-fairseq==0.12.3"],
        "libribrain": ["pnpl==0.2.0", "h5py", "pandas", "requests", "mne-bids"],
        "bids": ["mne-bids"],
        "probe": ["scikit-learn"],
        "test": ["pytest", "ruff", "h5py", "pandas", "scikit-learn", "mne-bids"],
    },
)
