# wasmpipe: the two commands are `make demo` and `make test`.
CARGO ?= cargo
WASMPIPE := target/release/wasmpipe
STAGES := passthrough clean scaler linreg evaluate hostile baseline

.PHONY: demo test toolchain host stages test-deps lint bench clean

## Run the demo pipeline (diabetes regression) on the local filesystem.
demo: stages
	$(WASMPIPE) run examples/diabetes/wasmpipe.toml

## Everything CI checks: formatting, lints, and the whole test suite
## (host workspace, then the stage SDK and stages' unit tests natively).
test: test-deps stages lint
	$(CARGO) test --release --workspace
	cd stages && $(CARGO) test --workspace

toolchain:
	scripts/install-wasm-toolchain.sh

host:
	$(CARGO) build --release -p wasmpipe-cli

## Build every stage crate into a component (prints path, size, hash).
stages: toolchain host
	@for s in $(STAGES); do $(WASMPIPE) build stages/$$s || exit 1; done

test-deps: toolchain
	scripts/install-test-deps.sh

lint:
	$(CARGO) fmt --all --check
	cd stages && $(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	cd stages && $(CARGO) clippy --workspace --all-targets -- -D warnings

bench: stages
	$(CARGO) bench -p wasmpipe-benches

clean:
	$(CARGO) clean
	rm -rf stages/target wasmpipe-data
