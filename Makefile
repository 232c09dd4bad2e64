# Loa: `make run` installs what is missing and starts the whole stack; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := libopus0 espeak-ng ffmpeg sox gstreamer1.0-tools gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good redis-server mosquitto mosquitto-clients chromium prometheus
MISSING = $(shell for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
            | grep -q 'install ok installed' || echo $$p; done)

.PHONY: run test deps debs bench clean

run: deps
	$(BIN)/loa up

test: deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: deps
	$(BIN)/python -m loadtest.bench_mixer
	$(BIN)/python -m loadtest.bench_relay
	$(BIN)/python -m loadtest.bench_emergency

deps: debs $(BIN)/.installed

debs:
	@missing="$(strip $(MISSING))"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages; run:  sudo apt-get install -y $$missing"; exit 1; \
	  fi; \
	fi

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) var .pytest_cache
