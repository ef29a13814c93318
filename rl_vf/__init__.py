"""rl_vf: does a learned value function beat final-outcome REINFORCE for LM policies?"""
