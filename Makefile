# sshidle: the two commands of the README are `make install` and `make test`.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# Where cargo puts its output (honours CARGO_TARGET_DIR).
TARGET_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)

.PHONY: all build release test test-deps lint lint-deps install uninstall deps bench build-deps deb

all: build

# Every system package of .ci/packages (the list CI installs too).
deps:
	sh .ci/deps

# The packages the tests need: installs the missing ones (as root), or stops
# at once naming them.
test-deps:
	@sh .ci/deps --if-missing

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

# Unit tests, the real-libpam tests and the end-to-end tests (need root; as
# another user they fail unless SSHIDLE_SKIP_E2E=REASON skips them on purpose).
# The end says how many tests did not run, and why: skips the harness
# recorded in $(SKIPS) and tests cargo reports as ignored.
#
# Three stages, to keep the whole run short on two cores:
# 1. The slow binaries (the Debian package built, Debian 12 and 13 roots
#    debootstrapped and booted, valgrind) run beside the unit tests and the
#    other end-to-end tests, niced, so that the timed tests keep the cores
#    (the slow ones' own bounds are seconds wide); their output is printed
#    when they are done.
# 2. Then, alone, the tests whose enforcer looks for unrecorded connections
#    among every sshd process of the machine (--find-unrecorded): they
#    would adopt, and end, the connections of tests running beside them.
SKIPS = $(TARGET_DIR)/sshidle-test-skips.txt
TEST_LOG = $(TARGET_DIR)/sshidle-test.log
SLOW_TESTS = install_e2e systemd_e2e valgrind
FINDING_TESTS = adversary_e2e unrecorded_e2e
OTHER_TESTS = $(filter-out $(SLOW_TESTS) $(FINDING_TESTS),$(basename $(notdir $(wildcard tests/tests/*.rs))))
CARGO_TEST = $(CARGO) test --no-fail-fast
TEST_ARGS = -- --test-threads=4
test: test-deps build-deps build lint
	@rm -f $(SKIPS) $(TEST_LOG)*
	$(CARGO) test --workspace --no-run
	@echo "make test: running $(SLOW_TESTS) beside the other tests (their output follows theirs)"
	@{ nice -n 10 $(CARGO_TEST) -p sshidle-tests $(SLOW_TESTS:%=--test %) $(TEST_ARGS) > $(TEST_LOG).slow 2>&1; \
	    echo $$? > $(TEST_LOG).slow.rc; } & \
	{ $(CARGO_TEST) --workspace --lib --bins $(OTHER_TESTS:%=--test %) $(TEST_ARGS); echo $$? > $(TEST_LOG).rc; } 2>&1 | \
	    tee $(TEST_LOG); \
	wait; cat $(TEST_LOG).slow; cat $(TEST_LOG).slow >> $(TEST_LOG)
	@{ $(CARGO_TEST) -p sshidle-tests $(FINDING_TESTS:%=--test %) $(TEST_ARGS); echo $$? > $(TEST_LOG).finding.rc; } 2>&1 | \
	    tee -a $(TEST_LOG)
	@skipped=$$(cat $(SKIPS) 2>/dev/null | wc -l); \
	ignored=$$(sed -n 's/^test result:.* \([0-9][0-9]*\) ignored.*/\1/p' $(TEST_LOG) | awk '{n += $$1} END {print n + 0}'); \
	echo "make test: $$((skipped + ignored)) test(s) did not run ($$skipped skipped on purpose, $$ignored ignored)"; \
	if [ -s $(SKIPS) ]; then sed 's/^/  skipped: /' $(SKIPS); fi; \
	status=0; for rc in $(TEST_LOG).rc $(TEST_LOG).slow.rc $(TEST_LOG).finding.rc; do \
	    [ "$$(cat $$rc 2>/dev/null)" = 0 ] || { echo "make test: failed ($$rc: $$(cat $$rc 2>/dev/null || echo missing))"; status=1; }; \
	done; exit $$status

lint: lint-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# What building needs, installed when missing (Debian, as root): Debian's own
# cargo where it is new enough (Rust 1.85: Debian 13 and later; Debian 12's
# is 0.66, rustc 1.63), else rustup's.
RUST_VERSION = 1.85
build-deps:
	@if ! command -v $(CARGO) >/dev/null 2>&1; then \
	    candidate=$$(apt-cache show --no-all-versions rustc 2>/dev/null | sed -n 's/^Version: //p' | head -n 1); \
	    if [ "$(CARGO)" = cargo ] && [ -n "$$candidate" ] && dpkg --compare-versions "$$candidate" ge $(RUST_VERSION); then \
	        echo "make: installing cargo rustc (Debian's $$candidate)"; \
	        export DEBIAN_FRONTEND=noninteractive; \
	        apt-get install -y -q --no-install-recommends cargo rustc || exit 1; \
	    else \
	        echo "make: $(CARGO) not found: install Rust $(RUST_VERSION) or newer, e.g. from https://rustup.rs (this release's rustc is $${candidate:-not packaged})" >&2; \
	        exit 1; \
	    fi; \
	fi
	@missing=""; \
	dpkg -s libpam0g-dev >/dev/null 2>&1 || missing="$$missing libpam0g-dev"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	if [ -n "$$missing" ]; then \
	    echo "make: installing$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends $$missing || \
	    { apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; }; \
	fi

# rustfmt and clippy for `make lint`: Debian packages them apart from its
# cargo (rustfmt, rust-clippy); rustup's toolchains have them as components.
lint-deps: build-deps
	@$(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1 || { \
	    if dpkg -S "$$(command -v $(CARGO))" >/dev/null 2>&1; then \
	        echo "make: installing rustfmt rust-clippy (for Debian's cargo)"; \
	        export DEBIAN_FRONTEND=noninteractive; \
	        apt-get install -y -q --no-install-recommends rustfmt rust-clippy || exit 1; \
	    else \
	        echo "make: cargo fmt and cargo clippy are needed: rustup component add rustfmt clippy" >&2; \
	        exit 1; \
	    fi; }
# Build, install the module, the PAM line, a default policy, the man pages and
# the enforcer service, and start it (as root). `make uninstall` undoes it.
install: build-deps
	$(CARGO) build --release -p sshidlectl -p pam-sshidle
	$(TARGET_DIR)/release/sshidlectl install

uninstall:
	@if [ -x /usr/local/sbin/sshidlectl ]; then /usr/local/sbin/sshidlectl uninstall; \
	else $(TARGET_DIR)/release/sshidlectl uninstall; fi

# The Debian package (dpkg-buildpackage, debhelper; cargo builds inside), in
# $(TARGET_DIR)/debian/, with its -dbgsym, .buildinfo and .changes. Check it
# with `lintian $(TARGET_DIR)/debian/sshidle_*.changes`.
deb: build-deps
	@command -v dh >/dev/null 2>&1 && command -v dpkg-buildpackage >/dev/null 2>&1 || { \
	    echo "make: installing debhelper dpkg-dev"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends debhelper dpkg-dev || \
	    { apt-get update -q && apt-get install -y -q --no-install-recommends debhelper dpkg-dev; }; }
	sh packaging/build-deb.sh $(TARGET_DIR)/debian
