"""Gymnasium text environments; importing this package registers every id below."""

import gymnasium

_ENTRY_POINTS = {
    "TicTacToe-v0": "envs.tictactoe:TicTacToeEnv",
    "ConnectFour-v0": "envs.connect_four:ConnectFourEnv",
    "ChessEndgame-v0": "envs.chess_endgame:ChessEndgameEnv",
    "Chess-v0": "envs.chess_game:ChessEnv",
    "CodeFunction-v0": "envs.code_function:CodeFunctionEnv",
    "Arithmetic-v0": "envs.arithmetic:ArithmeticEnv",
    "Countdown-v0": "envs.countdown:CountdownEnv",
    "KeyToDoor-v0": "envs.key_to_door:KeyToDoorEnv",
    "Decisions-v0": "envs.decisions:DecisionsEnv",
    "DoomedStep-v0": "envs.doomed_step:DoomedStepEnv",
    "ReasoningGym-v0": "envs.reasoning_gym_env:ReasoningGymEnv",
}

ENV_IDS: tuple[str, ...] = tuple(_ENTRY_POINTS)

for _env_id, _entry_point in _ENTRY_POINTS.items():
    # Registering an id twice warns, and this module may be imported or reloaded again.
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=_entry_point)
