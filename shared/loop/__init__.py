"""The closed loop: the LoopRound manifest, the round state machine, and the stages that drive it."""
