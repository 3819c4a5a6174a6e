# Convenience wrappers around tasks.py (which needs only Python and pip).
.PHONY: test demo venv completions clean pretrain-tiny
test:
	python3 tasks.py test
demo:
	python3 tasks.py demo
venv:
	python3 tasks.py venv
completions:
	python3 tasks.py completions
clean:
	python3 tasks.py clean
pretrain-tiny:
	python3 tasks.py pretrain-tiny
