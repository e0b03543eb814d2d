"""Latent chain-of-thought: a Coconut/CODI runner with hooks at every latent step,
do-operators on single steps, and a prefix-reusing sweep over steps."""
from .do_operators import (GaussianNoise, GlobalMean, Identity, LatentDropout, LatentOperator, LatentStats, Patch,
                        ProjectOut, PureNoise, Replace, StepMean, Swap, Zero, make_operator)
from .runner import LatentRollout, LatentRunner, StepContext
from .sweep import StepSweep, sweep_steps

__all__ = ["LatentRunner", "LatentRollout", "StepContext", "StepSweep", "sweep_steps", "LatentStats",
           "LatentOperator", "LatentDropout", "Identity", "Zero", "Replace", "GlobalMean", "StepMean", "GaussianNoise", "PureNoise",
           "Swap", "Patch", "ProjectOut", "make_operator"]
