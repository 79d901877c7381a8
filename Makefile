# Two commands on a fresh machine with only python3: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: install run run-replicas run-loss-history test fuzz lint bench k8s clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

# The seed's moons example on 2 synchronous workers (tf_keras + MultiWorkerMirroredStrategy).
run: $(STAMP)
	$(PY) examples/moons.py

run-replicas: $(STAMP)
	$(PY) examples/moons_replicas.py

run-loss-history: $(STAMP)
	$(PY) examples/loss_history.py

test: $(STAMP)
	$(PY) -m pytest

# A longer run of the message-handler fuzz test than `make test` does (FUZZ_EXAMPLES=30 there).
FUZZ_EXAMPLES ?= 3000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/coordinator/test_fuzz_handlers.py -p no:logging -q

lint: $(STAMP)
	$(VENV)/bin/ruff check distcb tests examples bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/run_all.py

# The example manifests in k8s/ (tests/k8s checks they are up to date).
K8S_IMAGE := registry.example.com/distcb-train:latest
k8s: $(STAMP)
	for variant in indexed-job jobset rayjob; do \
	  $(PY) -m distcb k8s render --variant $$variant --image $(K8S_IMAGE) --out k8s/$$variant.yaml; \
	done

clean:
	rm -rf $(VENV) build *.egg-info runs
