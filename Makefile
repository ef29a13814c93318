# rl_vf — see README.md. Every target runs inside .venv, which `make install` creates (and any target
# that needs it, when it is missing or older than pyproject.toml).
PY      ?= .venv/bin/python
ENV     ?= TicTacToe-v0
ALGO    ?= ppo
SEED    ?= 0
EPISODES?=
MODEL   ?= tiny
OUT     ?=
CONFIG  ?=
WANDB   ?= offline
ARGS    ?=
DEMOS   ?=
SEEDS   ?= 5
ALGOS   ?= ppo reinforce reinforce:rloo
SUITE   ?= experiments/suite.yaml
STUDY   ?= experiments/study.yaml
NPROC   ?= 1
STAMP    = .venv/.installed

TRAIN_FLAGS = --env $(ENV) --algo $(ALGO) --seed $(SEED) --model $(MODEL) --wandb $(WANDB) \
	$(if $(EPISODES),--total-episodes $(EPISODES)) $(if $(OUT),--out $(OUT)) $(if $(CONFIG),--config $(CONFIG))

.PHONY: install system-deps test test-slow train pretrain eval compare suite study bench help

help:
	@echo "make install                 system-deps, then create .venv and install rl_vf (editable) with its deps"
	@echo "make system-deps             optional Debian packages for the chess envs (stockfish, gaviotatb)"
	@echo "make test                    fast test suite (pytest, slow learning runs excluded)"
	@echo "make test-slow               the long learning runs (pytest -m slow)"
	@echo "make train ENV=.. ALGO=..    train (vars: ENV ALGO SEED EPISODES MODEL OUT CONFIG WANDB NPROC ARGS)"
	@echo "make pretrain ENV=.. DEMOS=N warm-start a policy on the env's demonstrations (vars: ENV SEED MODEL OUT CONFIG ARGS)"
	@echo "make compare ENV=.. SEEDS=5 ALGOS=\"ppo reinforce:rloo\"  variants x seeds, then a report (vars: EPISODES OUT ARGS)"
	@echo "make suite [SUITE=experiments/suite.yaml]  several comparisons and a cross-task summary (vars: OUT ARGS)"
	@echo "make study [ARGS=--quick]    the crossover study: where a value function starts to pay (vars: STUDY OUT ARGS)"
	@echo "make eval CHECKPOINT=DIR     evaluate a checkpoint or run folder (vars: ENV EPISODES ARGS)"
	@echo "make bench [ARGS=--quick]    engine vs naive generate vs trl, decode roofline, update speed (experiments/bench.py)"

install: system-deps
	python3 -m venv .venv
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

# Every target that runs rl_vf installs first when .venv is missing or older than pyproject.toml.
$(STAMP): pyproject.toml
	$(MAKE) install

system-deps:
	bash scripts/install-system-deps.sh

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

train: $(STAMP)
	$(PY) -m rl_vf train --processes $(NPROC) $(TRAIN_FLAGS) $(ARGS)

pretrain: $(STAMP)
	$(PY) -m rl_vf pretrain --env $(ENV) --seed $(SEED) --model $(MODEL) $(if $(DEMOS),--demos $(DEMOS)) \
		$(if $(OUT),--out $(OUT)) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

compare: $(STAMP)
	$(PY) -m rl_vf compare --env $(ENV) --seeds $(SEEDS) --algos "$(ALGOS)" --wandb $(WANDB) --processes $(NPROC) \
		$(if $(EPISODES),--episodes $(EPISODES)) $(if $(OUT),--out $(OUT)) $(ARGS)

suite: $(STAMP)
	$(PY) -m rl_vf suite --config $(SUITE) --wandb $(WANDB) --processes $(NPROC) $(if $(OUT),--out $(OUT)) $(ARGS)

study: $(STAMP)
	$(PY) -m rl_vf sweep --config $(STUDY) --wandb $(WANDB) --processes $(NPROC) $(if $(OUT),--out $(OUT)) $(ARGS)

eval: $(STAMP)
	$(PY) -m rl_vf eval --checkpoint $(CHECKPOINT) $(if $(filter command line,$(origin ENV)),--env $(ENV)) \
		$(if $(EPISODES),--episodes $(EPISODES)) $(ARGS)

bench: $(STAMP)
	$(PY) experiments/bench.py $(ARGS)
