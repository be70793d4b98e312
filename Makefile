# Every target bootstraps .venv on a fresh machine; nothing else needs to be installed by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned as a matching pair (torchvision's compiled ops need the torch it was built
# for); override both for another platform, e.g. make TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" serve
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: serve test bench lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[server,worker,dev,bench]"
	touch $@

serve: $(STAMP)
	$(BIN)/repscope serve

# pytest exits 5 when it collected no test: report it rather than fail on an empty selection.
test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check repscope backend worker tests benchmarks

clean:
	rm -rf $(VENV) data .pytest_cache
