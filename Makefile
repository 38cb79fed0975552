.PHONY: install test lint serve bench

install:
	./scripts/install

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test:
	.venv/bin/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

lint:
	.venv/bin/ruff check
	.venv/bin/ruff format --check

serve:
	.venv/bin/sam2-server serve
