# Two entry points for a newcomer: `make demo` (the main job on a real model) and `make test`.
# Both create .venv when it is missing and install into it once (a stamp file records the install;
# editing pyproject.toml triggers a reinstall).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aitune_triton-installed
# The CPU build of torch lies on the project machines' disk; a bare `torch` requirement would pull
# a multi-GB CUDA build, so the pin is installed before the package.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test install clean nginx

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[serve,examples,dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) examples/minilm.py

# The compose target's nginx checks (nginx -t, two servers behind nginx) need Debian's nginx: it is
# installed where this runs as root with apt-get (CI); elsewhere those tests skip, saying why.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| apt-get install -y -q nginx-light >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nginx-light >/dev/null 2>&1) \
		|| echo "nginx could not be installed: the nginx tests will skip"

test: $(STAMP) nginx
	$(PY) -m mypy
	HF_HUB_OFFLINE=1 $(PY) -m pytest

clean:
	rm -rf checkpoints build dist .pytest_cache
	find model_repository -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
