"""The simulated providers: the `piggybank` card acquirer and a bank, programs of their own (`python -m
actors.simulators.piggybank`, `python -m actors.simulators.bank`) that stand for the outside world. The gateway
talks to them only over HTTP and through their signed callbacks, as it would to real providers: nothing of ours
imports this package, and it imports nothing of ours."""
