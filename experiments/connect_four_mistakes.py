"""Where a ConnectFour-v0 policy's greedy moves go wrong, move by move, against the exact solver.

Plays the final evaluation's games (same seeds as `rl-vf eval`) and sorts every agent move into

- ``win``: the agent could win at once; ``missed`` counts moves that did not;
- ``block``: it could not, but the opponent threatened to win at once; ``missed``: not blocked;
- ``quiet``: neither; ``missed`` counts moves the solver rates worse than its best.

    python experiments/connect_four_mistakes.py --checkpoint runs/<run> --episodes 1000
"""
import json
from collections import Counter

from envs.connect_four import AGENT, EMPTY, OPPONENT, Game
from greedy_games import greedy_games, parse_args
from rl_vf.actor import transcript


def board_from_observation(observation: str, g: Game) -> str:
    """The solver's board string (column by column, bottom up) of an observation (rows top first)."""
    rows = observation.rstrip("\n").split("\n")[-g.rows - 1:-1]  # the footer of column numbers is last
    board = [EMPTY] * (g.rows * g.cols)
    for r, line in enumerate(reversed(rows)):
        for c, mark in enumerate(line):
            board[c * g.rows + r] = mark
    return "".join(board)


def classify(board: str, col: int, g: Game) -> tuple[str, bool]:
    """The kind of position (win, block, quiet) and whether the move `col` (0-based; -1: invalid) is wrong."""
    if wins := g.winning_columns(board, AGENT):
        return "win", col not in wins
    if threats := g.winning_columns(board, OPPONENT):
        return "block", col not in threats
    return "quiet", col not in g.solve(board, AGENT)[1]


def mistakes(observations_and_actions, g: Game) -> Counter:
    counts = Counter()
    for observation, action in observations_and_actions:
        action = action.strip()
        col = int(action) - 1 if action.isdigit() and 1 <= int(action) <= g.cols else -1
        kind, missed = classify(board_from_observation(observation, g), col, g)
        counts[kind] += 1
        counts[f"{kind}_missed"] += missed
    return counts


def main() -> None:
    args = parse_args(__doc__)
    c, metrics, episodes = greedy_games("ConnectFour-v0", args)
    env = c.env_info.make()
    g = env.unwrapped.rules
    env.close()
    pairs = []
    for ep in episodes:
        parts = transcript(c.tokenizer, ep)
        pairs += [(o["observation"], a["action"]) for o, a in zip(parts, parts[1:])
                  if "observation" in o and "action" in a]
    counts = mistakes(pairs, g)
    rates = {f"{k}_missed_rate": counts[f"{k}_missed"] / max(counts[k], 1) for k in ("win", "block", "quiet")}
    print(json.dumps({"eval/success_rate": metrics["eval/success_rate"], **counts, **rates}))


if __name__ == "__main__":
    main()
