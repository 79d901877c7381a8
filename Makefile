# Two commands on a fresh machine with only python3: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: install browser run run-replicas run-loss-history run-jax test fuzz chaos lint bench k8s clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

# The status page's browser test (tests/server/test_status_page_browser.py) drives Debian's
# chromium through chromedriver. Installed here, once, quietly (apt-get, as root: CI); nothing
# happens when both are there. Where they cannot be installed the test fails and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "make browser: installing chromium and chromium-driver (apt-get)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq >/dev/null && \
	  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	else \
	  echo "make browser: cannot install chromium and chromium-driver here (needs root and" \
	    "apt-get); the status page's browser test will fail until they are installed" >&2; \
	fi

# The seed's moons example on 2 synchronous workers (tf_keras + MultiWorkerMirroredStrategy).
run: $(STAMP)
	$(PY) examples/moons.py

run-replicas: $(STAMP)
	$(PY) examples/moons_replicas.py

run-loss-history: $(STAMP)
	$(PY) examples/loss_history.py

# The same, in Keras 3 `fit` on 2 JAX processes (keras.distribution); the single process's Train/Test.
run-jax: $(STAMP)
	$(PY) examples/moons_jax.py

test: $(STAMP) browser
	$(PY) -m pytest

# A longer run of the message-handler fuzz test than `make test` does (FUZZ_EXAMPLES=30 there).
FUZZ_EXAMPLES ?= 3000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/coordinator/test_fuzz_handlers.py -p no:logging -q

# SIGKILLs from outside into every phase of a resumable job (tests/helpers/chaos.py): N kills,
# then a table per phase (identical, loud failures and their causes, recovery time).
N ?= 200
CHAOS_JOBS ?= 3
chaos: $(STAMP)
	$(PY) -m tests.helpers.chaos --kills $(N) --jobs $(CHAOS_JOBS)

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
