# Shortcuts; the README's two commands are the scripts themselves.
.PHONY: dev test bootstrap migrate bench bench-quick bench-signing bench-scan

dev:
	bash local-dev/up.sh

test:
	bash local-dev/run-tests.sh

bootstrap:
	bash local-dev/bootstrap.sh

migrate: bootstrap
	.venv/bin/dropgate-dev migrate

# Benchmarks print ratios against a baseline measured in the same run (never part of the tests).
bench-signing: bootstrap
	.venv/bin/python -m bench.signing

bench-scan: bootstrap
	.venv/bin/python -m bench.scan

# The whole table (README "Performance"); `make bench-quick` for a run of a few minutes.
bench: bootstrap
	.venv/bin/python -m bench.run

bench-quick: bootstrap
	.venv/bin/python -m bench.run --quick
