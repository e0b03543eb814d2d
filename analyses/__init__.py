"""Studies that combine measurements and interventions: DPO policy shift, latent-CoT causal
structure, knowledge entropy over pretraining; reports, plots and the ``policylens`` CLI."""
