# wasmpipe: the two commands are `make demo` and `make test`.
CARGO ?= cargo
WASMPIPE := target/release/wasmpipe
STAGES := passthrough clean scaler linreg evaluate hostile baseline logreg kmeans classify_eval split minmax imputer hasher bucketizer poly onehot validate

.PHONY: demo test toolchain python-toolchain host stages test-deps lint bench clean test-aarch64 fuzz wheel

## Run the demo pipelines on the local filesystem: diabetes regression,
## breast-cancer binary and wine multi-class classification, and iris,
## which mixes Rust stages and a Python one (stages/scaler_py).
demo: stages python-toolchain
	$(WASMPIPE) run examples/diabetes/wasmpipe.toml
	$(WASMPIPE) run examples/breast_cancer/wasmpipe.toml
	$(WASMPIPE) run examples/wine/wasmpipe.toml
	$(WASMPIPE) run examples/iris/wasmpipe.toml

## Everything CI checks: formatting, lints, and the whole test suite
## (host workspace, then the stage SDKs' and stages' unit tests natively,
## Rust and Python, then the Ray engine on a loopback cluster).
test: test-deps stages lint
	$(CARGO) test --release --workspace
	cd stages && $(CARGO) test --workspace
	.tools/venv/bin/python -m pytest -q stages/sdk-python/tests
	$(MAKE) wheel
	.tools/venv/bin/python -m pytest -q engines/ray/tests

toolchain:
	scripts/install-wasm-toolchain.sh

## componentize-py, which builds Python stages, in .tools/venv.
python-toolchain:
	scripts/install-componentize-py.sh

## The `wasmpipe` binary as a Python wheel (maturin, `bindings = "bin"`),
## in target/wheels: what a Ray node or a node image installs.
wheel: test-deps
	.tools/venv/bin/maturin build --release -m host/cli/Cargo.toml -o target/wheels

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

## Criterion benches (stage, pipeline), storage throughput on Garage
## (installed by test-deps) against the local filesystem, text ingest
## against Arrow's decoders, then logistic regression at scale against
## scikit-learn, then Python stages against Rust ones, then the Ray engine
## against the local engine.
bench: stages test-deps
	$(CARGO) bench -p wasmpipe-benches --bench stage --bench pipeline
	$(CARGO) bench -p wasmpipe-benches --bench storage
	$(CARGO) bench -p wasmpipe-benches --bench ingest
	$(CARGO) bench -p wasmpipe-benches --bench scale
	$(CARGO) bench -p wasmpipe-benches --bench python
	.tools/venv/bin/python benches/ray_engine.py
	.tools/venv/bin/python benches/peers.py
	.tools/venv/bin/python benches/memory.py

clean:
	$(CARGO) clean
	rm -rf stages/target wasmpipe-data

## The SIMD kernels' NEON path, under qemu (not part of `make test`: it
## needs rustup's aarch64 target, a cross gcc and qemu-user).
test-aarch64:
	rustup target add aarch64-unknown-linux-gnu
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
	$(CARGO) test --release -p wasmpipe-simd --target aarch64-unknown-linux-gnu

## Fuzz every target under libFuzzer (cargo-fuzz, on stable Rust) for
## FUZZ_SECONDS each, from the seeds in fuzz/corpus/TARGET/ (which `make
## test` replays); inputs that reach new code go to fuzz/found/TARGET/
## (not committed), crashes to fuzz/artifacts/. A crash, once fixed, joins
## the seeds.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := manifest records csv jsonl parquet kernels
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/found/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer none --features libfuzzer $$t fuzz/found/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=30 || exit 1; \
	done
