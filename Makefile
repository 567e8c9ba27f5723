# The README's two commands: `make demo` and `make test`. Both create .venv and install what the
# project needs first: torch 2.13.0 unless .venv has a torch already (pip takes the CPU wheel from this
# machine's disk; on a GPU machine install your CUDA build of torch into .venv before running make),
# then the project with the versions in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unpinned bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test,ui,quantize]'
	touch $(STAMP)

# The web UI's tests drive Debian's chromium (headless) through Playwright; install it where missing.
BROWSER := /usr/bin/chromium
$(BROWSER):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  (DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	   ($$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null)) \
	  || { echo "make: could not install chromium (apt); the browser tests need it at $(BROWSER)" >&2; exit 1; }

install: $(STAMP)

demo: install
	$(VENV)/bin/dreambooth demo --overwrite

# Two workers (pytest-xdist; CI has 2 cores), one test file per worker at a time, one thread each.
TEST_WORKERS ?= 2
test: install $(BROWSER)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# What a user gets from `pip install -e .` into their own environment (no constraints.txt: pip takes the
# newest releases pyproject.toml allows), checked by the smoke tests in a venv of its own. CI runs it.
UNPINNED := .venv-unpinned
test-unpinned:
	rm -rf $(UNPINNED)
	$(PYTHON) -m venv $(UNPINNED)
	$(UNPINNED)/bin/python -m pip install -q --upgrade pip
	$(UNPINNED)/bin/python -m pip install -q torch==2.13.0
	$(UNPINNED)/bin/python -m pip install -q -e . pytest
	$(UNPINNED)/bin/python -m pip list 2>/dev/null | grep -iE '^(diffusers|transformers|peft|accelerate|huggingface-hub|safetensors) '
	$(UNPINNED)/bin/python -m pytest -q -m smoke -p no:cacheprovider

bench: install
	$(PY) -m benchmarks.train

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(UNPINNED) demo-output
