# The two commands of the README. Both create the virtual environment and install what is missing.
#   make demo   the main job: teacher + 3 students distilled on MNIST with Ray Train (2 workers)
#   make test   the default test suite (what CI runs through .ci/run)
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
export RAY_TRAIN_V2_ENABLED := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow clean

setup:
	@scripts/setup.sh "$(PY)" "$(VENV)"

demo: setup
	$(VENV)/bin/raykd run configs/mnist_kd.yaml

test: setup
	@scripts/pytest.sh $(VENV) -m "not slow"

test-slow: setup
	@scripts/pytest.sh $(VENV) -m slow

clean:
	rm -rf runs .pytest_cache
