PY := .venv/bin/python

.PHONY: env test demo clean

# Create .venv/ with the pinned stack (idempotent; a re-run takes well under a second).
env:
	bash scripts/setup_env.sh

test: env
	$(PY) -m pytest -q tests

demo: env
	$(PY) tools/study.py configs/studies/demo.yaml --output output/demo

clean:
	rm -rf output
