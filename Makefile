# sshidle: the two commands of the README are `make install` and `make test`.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build release test lint install uninstall deps bench

all: build

deps:
	bash .ci/deps

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

# Unit tests, the real-libpam tests and the end-to-end tests (need root).
test: build lint
	$(CARGO) test --workspace -- --test-threads=4

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

install: release
	./target/release/sshidlectl install

uninstall:
	./target/release/sshidlectl uninstall
