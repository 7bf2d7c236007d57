"""The Markdown page of a tuning run: the verdict, then the whole grid, one row per configuration."""

SHORT = {"graph_optimization_level": "opt", "intra_op_num_threads": "intra", "inter_op_num_threads": "inter",
         "execution_mode": "mode", "enable_cpu_mem_arena": "arena", "enable_mem_pattern": "mem_pattern"}


def _options(options):
    """Compact `opt=EXTENDED intra=0 ...` for a table cell (unset keys are onnxruntime's defaults)."""
    parts = []
    for key, value in options.items():
        if isinstance(value, str):
            value = value.replace("ORT_ENABLE_", "").replace("ORT_DISABLE_ALL", "DISABLE_ALL").replace("ORT_", "")
        elif isinstance(value, bool):
            value = "on" if value else "off"
        parts.append(f"{SHORT.get(key, key)}={value}")
    return " ".join(parts) or "(onnxruntime defaults)"


def _num(value, fmt="{:.3f}"):
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def markdown(result):
    r = result
    lines = [
        f"# Session tuning of {r['release']} on {r['host']}",
        "",
        f"**{'Switch to #' + str(r['chosen']) if r['improved'] else 'Keep the current options'}**: {r['reason']}. "
        f"Stored choice for {r['release']}: {r['stored']}.",
        "",
        f"- Model: `{r['model']}`",
        f"- Chosen session options: `{_options(r['session_options'])}` "
        f"(P50 {_num(r['p50_ms'])} ms, P99 {_num(r['p99_ms'])} ms; current P50 {_num(r['baseline_p50_ms'])} ms)",
        f"- Current options (from {r['current_source']}): `{_options(r['current_options'])}`",
        f"- Noise: the current options measured twice in every batch differed by up to {r['noise_pct']:.2f}% "
        f"(P50); a configuration must beat them by more than {r['threshold_pct']:.2f}% "
        f"(the noise, at least min_gain_pct {r['min_gain_pct']:g}%)",
        *([f"- Confirmation: #{c['index']} measured again beside two fresh copies of the current options: P50 "
           f"{_num(c['p50_ms'])} ms vs {_num(c['baseline_p50_ms'])} ms ({c['gain_pct']:+.1f}%, copies "
           f"{c['noise_pct']:.2f}% apart): {'confirmed' if c['confirmed'] else 'not confirmed'}"]
          if (c := r.get("confirmation")) else []),
        f"- Fidelity: outputs within max abs {r['fidelity_max_abs']:g} of onnxruntime's defaults",
        f"- Runs: {r['warmup']} warm-up and {r['runs']} timed per configuration, alternating in rounds, "
        f"{r['processes']} live processes per batch, {r['batches']} batch(es), {r['elapsed_s']} s "
        f"(budget {r['time_budget_s']:g} s{', exceeded by the required configurations' if r['over_budget'] else ''}); "
        f"{r['cpus']} CPU(s); inputs "
        + ", ".join(f"`{k}` {v['shape']} {v['dtype']}" for k, v in r["inputs"].items()),
        "",
        "| # | configuration | session options | P50 ms | P90 ms | P99 ms | vs current | max abs | load s | RSS MiB "
        "| seeds' P50 ms | verdict |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for e in r["grid"]:
        lines.append(
            f"| {e['index']} | {'; '.join(e['labels'])} | `{_options(e['options'])}` | {_num(e['p50_ms'])} "
            f"| {_num(e['p90_ms'])} | {_num(e['p99_ms'])} | {e['gain_pct']:+.1f}% | {_num(e['max_abs'], '{:.2g}')} "
            f"| {_num(e['load_s'])} | {_num(e['peak_rss_mb'], '{:.1f}')} | {_num(e['seed_p50_ms'], '{:.1f}')} "
            f"| {e['status']} |")
    lines += ["", "The current options were measured twice in every batch:", ""]
    lines += [f"- batch {b['batch']}: P50 {b['copies_p50_ms'][0]:.3f} / {b['copies_p50_ms'][1]:.3f} ms "
              f"({b['noise_pct']:.2f}% apart)" for b in r["grid"][0]["batches"]]
    if r["not_measured"]:
        lines += ["", f"Not measured (time budget): {len(r['not_measured'])} configuration(s): "
                  + "; ".join(", ".join(labels) for labels in r["not_measured"])]
    lines += ["", "\"vs current\" compares each configuration with the current options measured in the same "
              "batch (positive: faster). \"seeds' P50\" is what the team measured by hand on their own machine "
              "and model (latency report, 29 Oct 2025): compare the order, not the values.", ""]
    return "\n".join(lines)
