# Every target creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps fuzz-deps test test-pythons lint docs bench bench-verbs demo interop faults soak fuzz clean

install: $(STAMP)

# The compiled wire core is built by the editable install: a change to its C
# sources (or to setup.py) rebuilds it.
WIRE_SOURCES := $(wildcard smbdirect_socket/_wire/*.c smbdirect_socket/_wire/*.h)

$(STAMP): pyproject.toml setup.py $(WIRE_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77"  # the same setuptools as the build, for fuzz's direct build
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages some tests use (tshark for the wire check, Samba as the SMB
# server behind the gateway).  Installed when run as root; otherwise those
# tests are skipped with the reason.
system-deps:
	@if command -v tshark >/dev/null && { command -v smbd || test -x /usr/sbin/smbd; } >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends tshark samba >/dev/null; \
	else echo "not root: tshark and samba not installed, their tests will be skipped"; fi

test: install system-deps
	$(PY) -m pytest

# The suite on the other Python versions the classifiers name, each in its
# own virtual environment (.venv-3.12, ...) with the wire core built for that
# interpreter, which comes from pyenv.  A missing pyenv or version is a
# failure: the classifiers claim what this tests.  PYTHONS_PYTEST_ARGS narrows
# the suite (CI leaves out tests that do not depend on the Python version).
PYTHONS ?= 3.12 3.13
PYTHONS_PYTEST_ARGS ?=
test-pythons: system-deps
	@command -v pyenv >/dev/null || { echo "test-pythons: pyenv not found, it provides Python $(PYTHONS)"; exit 1; }
	@passed=; failed=; for v in $(PYTHONS); do \
	  full=$$(pyenv latest $$v 2>/dev/null) && python=$$(PYENV_VERSION=$$full pyenv which python$$v 2>/dev/null) \
	    || { echo "test-pythons: Python $$v is not installed in pyenv (pyenv install $$v)"; failed="$$failed $$v(missing)"; continue; }; \
	  echo "test-pythons: Python $$full ($$python) in .venv-$$v"; start=$$(date +%s); \
	  if $(MAKE) --no-print-directory install PYTHON=$$python VENV=.venv-$$v \
	    && .venv-$$v/bin/python -m pytest $(PYTHONS_PYTEST_ARGS); \
	  then passed="$$passed $$full"; else failed="$$failed $$full"; fi; \
	  echo "test-pythons: Python $$full took $$(( $$(date +%s) - start )) s"; \
	done; echo "test-pythons: passed:$${passed:- none}; failed:$${failed:- none}"; test -z "$$failed"

lint: install
	$(PY) -m ruff check smbdirect_socket tests benchmarks
	$(PY) -m ruff format --check smbdirect_socket tests benchmarks
	$(PY) -m mypy smbdirect_socket benchmarks

# The documentation site (site/); warnings are errors.
docs: install
	$(VENV)/bin/mkdocs build --strict --quiet

bench: install system-deps
	$(PY) benchmarks/bench_protocol.py
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_trio.py
	$(PY) benchmarks/bench_trio.py --large
	$(PY) benchmarks/bench_socket.py
	$(PY) benchmarks/bench_socket.py --large
	$(PY) benchmarks/bench_gateway.py

# The verbs benchmark against perftest, in one boot of the interop guest (as root).
bench-verbs: install
	tests/interop/vm/setup.sh
	tests/interop/vm/run.sh --timeout 900 -- $(PY) benchmarks/bench_verbs.py
	tests/interop/vm/run.sh --timeout 900 -- $(PY) benchmarks/bench_verbs.py --large

# A soak: mixed load with clients killed at random, resources printed per
# interval; fails when any grows.  make soak DURATION=3600
DURATION ?= 120
soak: install system-deps
	$(PY) benchmarks/soak.py --duration $(DURATION)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site

demo: install system-deps
	$(PY) -m smbdirect_socket.demo

# The kernel interop suite: one boot of a guest with siw, rxe, ksmbd and cifs.ko.
interop: install
	tests/interop/vm/setup.sh
	tests/interop/vm/run.sh --smb --timeout 1800 -- timeout -s ABRT 1500 $(PY) -m pytest -p no:cacheprovider -v --durations=15 tests/interop

# The network fault tests that this host's kernel cannot run (it has no
# sch_netem nor tc's drop action; `make test` runs the rest as root), in one
# boot of the interop guest, whose kernel loads them.
faults: install
	tests/interop/vm/setup.sh
	tests/interop/vm/run.sh --timeout 2100 -- timeout -s ABRT 1800 $(PY) -m pytest -p no:cacheprovider -v -s -rA \
	  tests/netns -k "netem or drop"

# libFuzzer harnesses of the wire core under ASan and UBSan (clang and
# libfuzzer-*-dev from the system), FUZZ_SECONDS each; then the core's own
# tests under ASan.
FUZZ_SECONDS ?= 60
fuzz: install fuzz-deps
	$(MAKE) -C fuzz run FUZZ_SECONDS=$(FUZZ_SECONDS)

# clang with libFuzzer and the sanitizer runtimes, from Debian (as root).
fuzz-deps:
	@if ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends clang-14 libfuzzer-14-dev libclang-rt-14-dev >/dev/null; \
	else echo "not root: install clang-14 libfuzzer-14-dev libclang-rt-14-dev for make fuzz"; exit 1; fi
