# Loa: `make run` installs what is missing and starts the whole stack; `make test` runs the tests.
# (gcc and python3-dev: pip builds `pesq`, a test dependency, from source.)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := libopus0 espeak-ng ffmpeg sox gstreamer1.0-tools gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good redis-server mosquitto mosquitto-clients chromium prometheus \
        faketime gcc python3-dev systemd
MISSING = $(shell for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
            | grep -q 'install ok installed' || echo $$p; done)

.PHONY: run test test-shifted deps debs bench clean

run: deps
	$(BIN)/loa up

test: deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=15

# The modules that depend on the date or the hour, again on a clock that reads 03:30 in
# Asia/Ho_Chi_Minh one year from now (inside the default quiet hours) and runs on from there.
# libfaketime is preloaded and fakes the Python processes only (FAKETIME_ONLY_CMDS);
# redis-server and Mosquitto are started without it (devstack/services.py: it kills
# redis-server). The shift is an offset, not a start instant, so every child process reads
# the same clock; the monotonic clock stays real (the frame clock, lock timeouts), and
# tests/faketime/sitecustomize.py works around libfaketime's time.sleep bug that follows.
# Not the loadtest smoke: its speakers time packets by the kernel's receive stamps, which
# libfaketime cannot shift (tests/test_loadtest.py pins its night case instead).
SHIFTED_TESTS := tests/test_shifted_clock.py tests/test_schedules.py tests/test_schedule_api.py \
                 tests/test_control_api.py tests/test_ctl.py tests/test_reports.py \
                 tests/test_emergency_api.py tests/test_cap_examples.py tests/test_forward.py
#: the OpenAPI fuzzing takes 80 s and reads no clock (the fixture pins it)
SHIFTED_SKIP := not schemathesis
FAKETIME_LIB = $(firstword $(wildcard /usr/lib/*/faketime/libfaketime.so.1))
SHOW_CLOCK := from datetime import datetime; from zoneinfo import ZoneInfo; \
    print("shifted clock:", datetime.now(ZoneInfo("Asia/Ho_Chi_Minh")))

test-shifted: deps
	@test -n "$(FAKETIME_LIB)" || { echo "libfaketime is not installed (make debs)"; exit 1; }
	@at=$$(date -d "$$(TZ=Asia/Ho_Chi_Minh date -d '+1 year' +%F) 03:30 +07:00" +%s); \
	export LD_PRELOAD="$(FAKETIME_LIB)" FAKETIME="+$$((at - $$(date +%s)))" \
	       DONT_FAKE_MONOTONIC=1 FAKETIME_ONLY_CMDS=python,python3,python3.11 \
	       PYTHONPATH="$(CURDIR)/tests/faketime$${PYTHONPATH:+:$$PYTHONPATH}" LOA_SHIFTED_AT=$$at; \
	$(BIN)/python -c '$(SHOW_CLOCK)'; \
	$(BIN)/python -m pytest -q -k "$(SHIFTED_SKIP)" $(SHIFTED_TESTS)

bench: deps
	$(BIN)/python -m loadtest.bench_mixer
	$(BIN)/python -m loadtest.bench_relay
	$(BIN)/python -m loadtest.bench_emergency
	$(BIN)/python -m loadtest.bench_flood
	$(BIN)/python -m loadtest.bench_codec
	$(BIN)/python -m loadtest.bench_import

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
