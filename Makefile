# The two commands of the README: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.requirements-installed

.PHONY: train test setup clean

train: $(STAMP)
	$(VENV)/bin/python bin/train

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .   # `import sideways_tf` anywhere
	touch $@

clean:
	rm -rf $(VENV) workdir data_cache
