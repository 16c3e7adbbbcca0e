# tenant-edge — the commands in README.md.
CARGO ?= cargo

.PHONY: run test build release lint fmt bench bench-load bench-issuance check-conf clean

## make run: build, then start the edge on conf/dev.yaml with a demo upstream (Ctrl-C stops both)
run: build
	@scripts/run-dev.sh

## make test: every test (unit, integration against real processes, PostgreSQL and Pebble)
test:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --all-targets --no-fail-fast; \
	else \
		$(CARGO) test --all-targets --no-fail-fast; \
	fi

build:
	$(CARGO) build --bins

release:
	$(CARGO) build --release --bins

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## make bench: criterion benchmarks of the hot paths (name parse, cache hit, full handshake)
bench:
	$(CARGO) bench --bench hot_path

## make bench-load: whole-process load test against nginx and the bare upstream, same run
bench-load: release
	$(CARGO) build --release --example bare_pingora
	@scripts/bench-load.sh

## make bench-issuance: time to first byte for never-seen names and certificates/s, vs Caddy, on Pebble
bench-issuance: release
	@scripts/bench-issuance.sh

check-conf: build
	@for f in conf/*.yaml; do ./target/debug/tenant-edge check --syntax-only -c $$f || exit 1; done

clean:
	rm -rf data bench-results
