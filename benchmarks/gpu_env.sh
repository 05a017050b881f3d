# Sourced by the GPU visit scripts: installs the carried wheels (../shared/gpu/RECIPE.md, in
# .whl/, git-ignored) where fairseq does not import yet, and sets the environment.
if ! python3 -c "import fairseq" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
export PYTHONWARNINGS=ignore::FutureWarning
