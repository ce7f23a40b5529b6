# fhirbulk: build, demo and test entry points.
#
#   make demo   build the release library + sandbox server, run a real export over HTTPS with
#               examples/c/export_summary.c and print the records per resource type
#   make test   every test: rustfmt, clippy, Rust unit + integration tests, the generated
#               header check, and the C tests (AddressSanitizer, UBSan, valgrind)
#   make bench  the performance benchmark (bench/run.py): curl baseline, C, Python, Java, RSS,
#               many small files (C ABI, CLI, curl), waiting exports, 10 exports at once
#   make dist   every release artifact into dist/ (packaging/dist.sh): manylinux_2_28 wheels for
#               x86_64 and aarch64 + sdist, the jar with both Linux libraries (+ sources, javadoc,
#               pom), a tarball of the installed prefix and the fhirbulk command per platform
#   make test-dist
#               make dist, then each artifact used as its users would (tests/dist/run.sh); CI
#               runs it after make test
#   make install PREFIX=/usr/local
#               build the release library and the fhirbulk command and install them (shared +
#               static library, fhirbulk.h, fhirbulk.hpp, pkg-config and CMake files,
#               bin/fhirbulk)
#
# More test suites hook in by adding a prerequisite line, e.g.
#   test: test-python
# (make merges the prerequisites of rule lines without a recipe).

SHELL := /bin/bash
CARGO ?= cargo

DEMO_PATIENTS ?= 200
DEMO_RECORDS_PER_FILE ?= 1000
DEMO_GROUP ?= g1
DEMO_TYPES ?= Patient,Encounter,Observation,Condition,MedicationRequest
# Sandbox behaviour (README, "The sandbox server"): three "in progress" polls show X-Progress.
DEMO_SCENARIO ?= polls=3
DEMO_DIR := target/demo

.PHONY: all build demo install dist test-dist bench bench-spark test test-rust test-c test-java test-spark test-python test-packaging \
	test-bench fmt-check \
	clippy cargo-test header-check

all: build

build:
	$(CARGO) build --features sandbox

# ---- demo -----------------------------------------------------------------------------------

demo:
	$(CARGO) build --release --features sandbox
	@mkdir -p $(DEMO_DIR)
	$(CC) -std=c11 -O2 -Wall -Wextra -Iinclude -o $(DEMO_DIR)/export_summary \
		examples/c/export_summary.c -Ltarget/release -lfhirbulk -lpthread \
		-Wl,-rpath,$(CURDIR)/target/release
	@set -euo pipefail; \
	tmp=$$(mktemp -d); \
	target/release/fhirbulk-sandbox --port 0 --patients $(DEMO_PATIENTS) \
		--records-per-file $(DEMO_RECORDS_PER_FILE) --tls-dir "$$tmp/tls" \
		--port-file "$$tmp/port" >"$$tmp/log" 2>&1 & \
	pid=$$!; \
	trap 'kill $$pid 2>/dev/null || true; wait $$pid 2>/dev/null || true; rm -rf "$$tmp"' EXIT; \
	for _ in $$(seq 1 100); do [ -s "$$tmp/port" ] && break; sleep 0.1; done; \
	if [ ! -s "$$tmp/port" ]; then echo "sandbox did not start:"; cat "$$tmp/log"; exit 1; fi; \
	base="https://127.0.0.1:$$(cat "$$tmp/port")$(if $(DEMO_SCENARIO),/x/$(DEMO_SCENARIO))/fhir"; \
	echo "sandbox: $$base ($(DEMO_PATIENTS) patients, $(DEMO_RECORDS_PER_FILE) records per file; HTTPS with a test CA)"; \
	echo "+ FHIRBULK_CA_BUNDLE=$$tmp/tls/ca.pem $(DEMO_DIR)/export_summary $$base $(DEMO_GROUP) $(DEMO_TYPES)"; \
	FHIRBULK_CA_BUNDLE="$$tmp/tls/ca.pem" $(DEMO_DIR)/export_summary "$$base" $(DEMO_GROUP) $(DEMO_TYPES)

# ---- install ------------------------------------------------------------------------------

# PREFIX/lib (libfhirbulk.so.X.Y.Z + symlinks, libfhirbulk.a, pkgconfig/, cmake/fhirbulk/),
# PREFIX/include (fhirbulk.h, fhirbulk.hpp) and PREFIX/bin/fhirbulk; DESTDIR stages for packagers.
PREFIX ?= /usr/local

install:
	bash packaging/install.sh "$(abspath $(PREFIX))"

# ---- release artifacts ----------------------------------------------------------------------

# dist/{python,java,c,cli}, dist/SHA256SUMS; glibc 2.28 or newer, Linux x86_64 and aarch64. The
# tools (zig, cargo-zigbuild, maturin, twine, auditwheel) come from PyPI and crates.io into
# target/dist-tools on first use.
dist:
	bash packaging/dist.sh

# Not part of make test (it compiles the engine twice more, for two platforms); .ci/run runs it
# after make test.
test-dist: dist
	bash tests/dist/run.sh

# ---- benchmark ------------------------------------------------------------------------------

# The full benchmark (README, "Performance"; about 10 minutes): ~1 GB export, RSS at 1 and 4 GB,
# Python, Java, 10k/50k/200k one-record files, 1/100/1000 waiting exports, 10 exports at once.
bench:
	python3 bench/run.py

# The Spark connector against the engine and spark.read.json (README "Performance"; builds the
# connector jar and the pyspark virtualenv with bindings/spark/run-tests.sh when missing).
bench-spark:
	@[ -f bindings/spark/target/fhirbulk-spark-0.1.0.jar ] && [ -x bindings/spark/target/pyspark-venv/bin/python ] \
		|| bash bindings/spark/run-tests.sh
	python3 bench/spark_bench.py

# ---- tests ----------------------------------------------------------------------------------

# The one test command (README, .ci/run).
test: test-rust test-c
test: test-java
test: test-spark
test: test-python
test: test-packaging
test: test-bench

test-rust: fmt-check clippy cargo-test header-check

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-features --all-targets -- -D warnings

cargo-test:
	$(CARGO) test --all-features

# include/fhirbulk.h is generated by build.rs and committed: after a build it must not differ
# from the committed file.
header-check: build
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		untracked=$$(git ls-files --others --exclude-standard -- include/); \
		if [ -n "$$untracked" ]; then \
			echo "header check: untracked files in include/ (generated but not committed):"; \
			echo "$$untracked"; exit 1; \
		fi; \
		git diff --exit-code -- include/ || { \
			echo "header check: include/ differs from the committed header;" \
			     "commit the regenerated include/fhirbulk.h"; exit 1; }; \
		echo "header check: include/fhirbulk.h matches the committed file"; \
	else \
		echo "warning: not a git checkout; skipping the header check" >&2; \
	fi

test-c:
	bash tests/c/run.sh

# The Java binding: JUnit against the sandbox, the jar loading its bundled library in a clean JVM.
test-java:
	bash bindings/java/run-tests.sh --rebuild

# The Spark connector: JUnit with Spark in local mode against the sandbox, then PySpark with the
# shaded jar (after test-java, which builds the release library it installs).
test-spark:
	bash bindings/spark/run-tests.sh

# Installed like a user would (make install into a temporary prefix), then the pkg-config C
# example, the CMake C++ example and the fhirbulk.hpp wrapper tests against the sandbox.
test-packaging:
	bash tests/packaging/run.sh

# The benchmark as a smoke run (seconds: tiny sizes, 500 small files, 1 and 10 waiting exports,
# 3 at once; debug build) so that it cannot rot; the Python and Java parts have smoke tests in
# their own suites.
test-bench: build
	python3 bench/run.py --smoke --skip-python --skip-java

# The Python binding: pip-installed into a fresh virtualenv the way a user would, then pytest.
test-python:
	bash bindings/python/run-tests.sh
