"""The latent-CoT section of the demo report: the study's numbers as markdown tables."""

from __future__ import annotations


def _row(values, nd=3):
    return " | ".join("–" if v is None else f"{v:.{nd}f}" for v in values)


def latent_cot_markdown(numbers: dict) -> str:
    """The latent-CoT study's summary as tables (the full numbers are in report.json)."""
    s = numbers["summary"]
    seeds = numbers["seeds"]
    task = numbers["task"]
    k = len(s["logit_lens_acc"])
    lines = [
        f"A tiny transformer trained here on {task.get('task')} ({task.get('n_nodes')} nodes, {task.get('hops')} hops; "
        f"K = {k} latent steps) with the Coconut curriculum, and the pause-token control (latent positions fed a "
        f"learned constant). Seeds {seeds}.\n",
        "| seed | explicit CoT exact match | Coconut (all steps latent) | pause-token control |",
        "|---|---|---|---|",
    ]
    for i, seed in enumerate(seeds):
        lines.append(f"| {seed} | {s['cot_exact_match'][i]:.3f} | {s['coconut_acc'][i]:.3f} | {s['pause_acc'][i]:.3f} |")
    lines.append(f"| mean ± sd | | {s['coconut_acc_mean']:.3f} ± {s['coconut_acc_std']:.3f} | "
                 f"{s['pause_acc_mean']:.3f} ± {s['pause_acc_std']:.3f} |\n")
    steps = " | ".join(f"t={t}" for t in range(k))
    lines += [f"Necessity: change in accuracy when the operator replaces h_t (mean over seeds).\n",
              f"| operator | {steps} |", "|---|" + "---|" * k]
    for op, v in s["necessity"].items():
        lines.append(f"| {op} | {_row(v['d_acc'])} |")
    lines += ["", f"Early decidability: accuracy when the thought is closed after n = 0..{k} steps: "
              f"{_row(s['acc_after_n_steps'], 2)}; logit lens of h_t names the explicit step it replaces: "
              f"{_row(s['logit_lens_acc'], 3)}. First early exit that is correct (share of questions, n = 0..{k}): "
              f"{_row(s.get('decidability_first_correct_hist', []), 2)}; correct from n on: "
              f"{_row(s.get('decidability_stable_correct_hist', []), 2)}.\n",
              "Influence (step-mean operator at step i, KL of the answer read-out at step j > i):\n",
              "| i \\ j | " + " | ".join(str(j) for j in range(k)) + " |", "|---|" + "---|" * k]
    for i, row in enumerate(s["influence_kl"]):
        lines.append(f"| {i} | {_row(row, 2)} |")
    lines += ["", f"Locality (share of influence on t→t+1 edges): {s['locality_kl']:.2f} by KL, "
              f"{s['locality_distance']:.2f} by distance of h_j (node j read after j latents).\n"]
    n_q = s.get("answer_modes_n_questions", [])
    if s.get("output_commitment"):
        lines += [f"Answer-mode competition ({n_q} two-way questions per seed): output commitment per early exit "
                  f"{_row(s['output_commitment'], 2)}; per-question probe p_A(t) on A-trajectories "
                  f"{_row(s.get('representational_commitment_A', []), 2)}, on B-trajectories "
                  f"{_row(s.get('representational_commitment_B', []), 2)}.\n"]
    else:
        lines += [f"Answer-mode competition: no question qualifies (top two sampled answers covering >= 90 % with "
                  f"B/(A+B) in (0.3, 0.7); {n_q} per seed), so no commitment curve is reported.\n"]
    for fig in ("latent_cot_necessity.png", "latent_cot_influence.png", "latent_cot_commitment.png"):
        lines.append(f"![{fig}](latent_cot/{fig})")
    return "\n".join(lines)
