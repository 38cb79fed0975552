.PHONY: install test test-cluster lint serve bench

install:
	./scripts/install

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test:
	.venv/bin/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

# Only the cluster tests (a local Ray with 2 replicas, about a minute); `test` runs them too.
test-cluster:
	.venv/bin/python -m pytest -q -m cluster

# ruff; the layering contracts of docs/architecture.md (import-linter, [tool.importlinter]
# in pyproject.toml); the type checker over api/, engine/, codecs/, cli/, client/ and
# serving.py; the sync client is what scripts/unasync.py generates from the async one.
lint:
	.venv/bin/ruff check
	.venv/bin/ruff format --check
	.venv/bin/lint-imports
	.venv/bin/mypy
	.venv/bin/python scripts/unasync.py --check

serve:
	.venv/bin/sam2-server serve
