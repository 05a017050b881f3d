# One-command set-up, demo and tests. Everything runs inside .venv.
#   make demo   - set up, generate synthetic MEG, pre-train the tiny model on CPU, validate, extract features
#   make test   - set up, then the full test suite
#
# GPU users: override the torch pin, e.g. `make venv TORCH_SPEC="torch==2.13.0 --index-url ..."`.
# Every other package is pinned by constraints.txt (the versions the tests passed with).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
FAIRSEQ_SPEC ?= ve-fairseq==0.12.3
PNPL_SPEC ?= pnpl==0.2.0
# fairseq's runtime needs, listed here because fairseq itself is installed with --no-deps
# (its declared deps pull a torchaudio build that cannot load beside a CPU torch).
FAIRSEQ_RUNTIME_DEPS := hydra-core omegaconf numpy regex sacrebleu tqdm bitarray scikit-learn soundfile
PROJECT_DEPS := scipy mne mne-bids h5py pandas requests matplotlib pytest ruff tensorboardX
STAMP := $(VENV)/.meg2vec-installed
# `make venv CONSTRAINTS=` installs without the pins (e.g. for a torch build that needs others)
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: venv demo test lint clean-demo

venv: $(STAMP)

$(STAMP): setup.py Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip $(PIN)
	$(PIP) install -q $(TORCH_SPEC) $(PIN)
	$(PIP) install -q $(FAIRSEQ_RUNTIME_DEPS) $(PROJECT_DEPS) $(PIN)
	$(PIP) install -q --no-deps $(FAIRSEQ_SPEC) $(PNPL_SPEC) $(PIN)
	$(PIP) install -q --no-deps -e . $(PIN)
	touch $@

demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH bash tools/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-demo:
	rm -rf manifests/demo demo_out
