# Shortcuts; the README's two commands are the scripts themselves.
.PHONY: dev test bootstrap migrate bench bench-quick bench-signing bench-scan bench-profile

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

# Where presign's time goes under Uppy-style part signing: a py-spy flame graph and a table in bench/results/.
bench-profile: bootstrap
	.venv/bin/python -m pip install -qq --disable-pip-version-check -e '.[bench]'
	.venv/bin/python -m bench.profile

# The whole table (README "Performance"); `make bench-quick` for a run of a few minutes.
bench: bootstrap
	.venv/bin/python -m bench.run

bench-quick: bootstrap
	.venv/bin/python -m bench.run --quick
