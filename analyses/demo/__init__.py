"""``policylens demo``: every capability on the packaged model, into one report.

:mod:`.runner` runs the stages and writes ``report.json``/``report.md``; :mod:`.stages` holds the
stages (each returns numbers and a markdown section); :mod:`.corpora` the fixed texts they run on;
:mod:`.latent_cot_markdown` the latent-CoT section's tables.
"""

from .runner import run_demo
from .stages import STAGES, DemoContext, Stage

__all__ = ["STAGES", "DemoContext", "Stage", "run_demo"]
