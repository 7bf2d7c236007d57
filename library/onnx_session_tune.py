#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: onnx_session_tune
short_description: Measure onnxruntime session options on the host and keep the fastest that leaves the outputs unchanged
description:
  - Measures O(model) on this host with a grid of session options (C(graph_optimization_level),
    C(intra_op_num_threads), C(inter_op_num_threads), C(execution_mode), C(enable_cpu_mem_arena),
    C(enable_mem_pattern)) and records the choice for O(release) in a JSON local fact
    (O(fact_path), read back as C(ansible_local.sarai_tuning)).
  - The grid holds the current options, onnxruntime's defaults, the six configurations of the SARAi
    team's own grid search (latency report of 29 Oct 2025), then one option changed at a time from
    the current ones and further combinations, up to O(max_configs).
  - Measured like M(onnx_validate) - every configuration in its own loaded and warmed-up process,
    timed runs alternating between the processes in rounds. Configurations go in batches of
    O(processes) live processes; each batch also holds the current options twice, so every
    configuration is compared with the current options measured beside it, and the difference
    between the two copies is the run-to-run noise.
  - After the first batch, its measured load and inference times size the run to O(time_budget_s)
    - how many configurations, then how many timed runs (at least 20, at most O(runs)). The current
    options, the defaults and the seeds' configurations are always measured.
  - A configuration whose outputs differ from the defaults' by more than O(fidelity_max_abs) (max abs)
    is dropped. The fastest remaining one replaces the current options only when it beats them by
    more than the measured noise and O(min_gain_pct); otherwise the current options stay.
  - The fastest of many noisy measurements is partly luck, so that winner is measured again in a batch
    of its own beside two fresh copies of the current options, and replaces them only when it beats
    them again by more than the threshold and that batch's own noise.
  - The current options are the ones stored in the fact for O(release) when there are, else
    O(session_options). So a second run on a tuned host compares against its own choice and, within
    the noise, keeps it.
  - Reports C(changed) only when the stored choice for O(release) changes; an unchanged choice leaves
    the fact file untouched.
version_added: "0.1.0"
author: sarai-deploy
options:
  model:
    description: The deployed model to tune (its external data beside it).
    type: path
    required: true
  release:
    description: Release id the choice is stored under (e.g. C(int8-0123456789ab)).
    type: str
    required: true
  session_options:
    description:
      - The options the service runs with now (C(audio_omni.session_options) of sarai.yaml), same keys
        as M(onnx_validate). Used when the fact holds nothing for O(release).
      - Keys other than the six tuned ones (C(config_entries), C(providers), C(enable_mem_reuse)) are
        kept unchanged in every configuration.
    type: dict
  inputs:
    description: An C(.npz) file with one array per model input.
    type: path
  input_shapes:
    description: Input name -> full shape, for inputs with symbolic dims.
    type: dict
  input_values:
    description: Input name -> fixed value, for integer and scalar inputs.
    type: dict
  seed:
    description: Seed of the generated float inputs.
    type: int
    default: 0
  warmup:
    description: Untimed runs per process after the first inference (at least 1; they also estimate the cost of a run).
    type: int
    default: 3
  runs:
    description: Timed runs per configuration at most; fewer when O(time_budget_s) requires, never fewer than 20.
    type: int
    default: 300
  grid:
    description:
      - Values to try, by tuned key (e.g. C(intra_op_num_threads) -> C([0, 1, 4])). Keys not given use
        the defaults - every optimisation level and execution mode, threads 0/1/half/all of the host's
        CPUs, inter-op threads 0/2, arena and memory pattern on/off.
    type: dict
  max_configs:
    description:
      - Most configurations in the grid, the current options included. Must hold the required ones
        (current, defaults, seeds' configurations; up to 8).
    type: int
    default: 24
  time_budget_s:
    description:
      - Seconds the measurement should take. The required configurations are measured even when they
        alone exceed it (RV(over_budget)).
    type: float
    default: 60.0
  processes:
    description:
      - Live measuring processes per batch (each holds a copy of the model in RAM), at least 3 - the
        current options twice and one or more candidates. Lowered to what fits in half of MemAvailable.
    type: int
    default: 6
  fidelity_max_abs:
    description: Largest absolute difference allowed between a configuration's outputs and the defaults'.
    type: float
    default: 0.0001
  min_gain_pct:
    description: Smallest P50 gain over the current options (percent) worth a change, even when the measured noise is lower.
    type: float
    default: 5.0
  fact_path:
    description: The tuning fact.
    type: path
    default: /etc/ansible/facts.d/sarai_tuning.fact
  report:
    description:
      - Write the full result as JSON to this C(.json) path and a Markdown table of the grid beside it
        (C(.md)); the directory must exist. Not in check mode.
    type: path
notes:
  - Supports check mode (measures, writes neither fact nor report) and diff mode (the fact before and after).
  - Needs RAM for O(processes) copies of the model; measures one batch at a time.
seealso:
  - module: onnx_validate
"""

EXAMPLES = r"""
- name: Tune the session options of the running INT8 release
  onnx_session_tune:
    model: /opt/sarai/models/releases/int8-0123456789ab/agi_audio_core_int8.onnx
    release: int8-0123456789ab
    session_options:
      graph_optimization_level: ORT_ENABLE_EXTENDED
      intra_op_num_threads: 0
      execution_mode: ORT_SEQUENTIAL
    input_shapes:
      hidden_states: [1, 4, 2048]
    report: /opt/sarai/reports/tune-int8-0123456789ab.json
  register: tuning
  vars:
    ansible_python_interpreter: /opt/sarai-runtime/bin/python
"""

RETURN = r"""
session_options:
  description: The chosen options (the current ones when nothing beat them), to render into sarai.yaml.
  returned: always
  type: dict
previous_options: {description: The options stored for the release before this run, or null., returned: always, type: dict}
current_options: {description: The options compared against., returned: always, type: dict}
current_source: {description: C(fact) or C(session_options) - where the current options came from., returned: always, type: str}
improved: {description: Whether a configuration beat the current options., returned: always, type: bool}
reason: {description: Why this choice, with the gain and the noise threshold., returned: always, type: str}
p50_ms: {description: P50 of the chosen options., returned: always, type: float}
p99_ms: {description: P99 of the chosen options., returned: always, type: float}
baseline_p50_ms: {description: P50 of the current options (every copy pooled)., returned: always, type: float}
gain_pct: {description: P50 gain of the choice over the current options measured in the same batch., returned: always, type: float}
noise_pct: {description: Largest P50 difference between the two copies of the current options in a batch., returned: always, type: float}
threshold_pct: {description: The gain a configuration had to beat - the larger of RV(noise_pct) and O(min_gain_pct)., returned: always, type: float}
confirmation:
  description:
    - The winner measured again beside two fresh copies of the current options - C(index), C(p50_ms),
      C(p99_ms), C(baseline_p50_ms), C(gain_pct), C(noise_pct), C(confirmed). Null when the current options
      won, or were replaced because they change the outputs.
  returned: always
  type: dict
grid:
  description:
    - One entry per measured configuration, the current options first - C(index), C(labels), C(options),
      C(p50_ms), C(p90_ms), C(p99_ms), C(gain_pct), C(max_abs) (against the defaults), C(faithful),
      C(load_s), C(peak_rss_mb), C(seed_p50_ms) (the team's number for a seed configuration), C(status).
  returned: always
  type: list
  elements: dict
not_measured: {description: Labels of the configurations the time budget left out., returned: always, type: list, elements: list}
runs: {description: Timed runs per configuration., returned: always, type: int}
over_budget: {description: Whether the required configurations alone exceeded O(time_budget_s)., returned: always, type: bool}
elapsed_s: {description: Seconds spent measuring., returned: always, type: float}
fact: {description: The fact entry of the release after this run., returned: always, type: dict}
report: {description: Path of the JSON report, or null., returned: always, type: str}
report_md: {description: Path of the Markdown report, or null., returned: always, type: str}
msg: {description: The verdict in one line., returned: always, type: str}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_onnx.commands import feeding_module, run_module


def main():
    run_module(feeding_module(
        AnsibleModule,
        model=dict(type="path", required=True),
        release=dict(type="str", required=True),
        session_options=dict(type="dict"),
        seed=dict(type="int", default=0),
        warmup=dict(type="int", default=3),
        runs=dict(type="int", default=300),
        grid=dict(type="dict"),
        max_configs=dict(type="int", default=24),
        time_budget_s=dict(type="float", default=60.0),
        processes=dict(type="int", default=6),
        fidelity_max_abs=dict(type="float", default=0.0001),
        min_gain_pct=dict(type="float", default=5.0),
        fact_path=dict(type="path", default="/etc/ansible/facts.d/sarai_tuning.fact"),
        report=dict(type="path"),
    ), "tune")


if __name__ == "__main__":
    main()
