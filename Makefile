# Shortcuts; the README's two commands are the scripts themselves.
.PHONY: dev test bootstrap migrate

dev:
	bash local-dev/up.sh

test:
	bash local-dev/run-tests.sh

bootstrap:
	bash local-dev/bootstrap.sh

migrate: bootstrap
	.venv/bin/dropgate-dev migrate
