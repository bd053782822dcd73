# Two entry points, both self-installing: `make demo` and `make test`.
# The virtual environment lives in .venv and is reused; delete it to start fresh.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	# the tests' reference for upscaler models (tests/test_upscale_models.py); --no-deps: its torchvision
	# requirement cannot be met beside our torch, and the tests stub the two names it imports
	$(VENV)/bin/pip install -q --no-deps spandrel==0.4.2 einops==0.8.2
	touch $(STAMP)

.PHONY: demo test venv
venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stablekit generate "a large red star on a blue background" --out out/demo.png --overwrite

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --durations=30
