#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: onnx_validate
short_description: Time an ONNX model, compare it with its FP32 reference and apply quality and speed gates
description:
  - Loads O(model) (and O(reference)) with onnxruntime and the given O(session_options), each in a
    fresh child process, runs O(warmup) untimed and O(runs) timed inferences on the same inputs,
    and reports load time, first inference, latency percentiles and peak RSS.
  - Both processes stay up while the timed runs alternate between them in rounds, so other load on
    the host falls on both alike; the host needs RAM for both models at once.
  - With O(reference), compares every output on its own (cosine, MSE, MAE, max abs error, non-finite
    values); the fidelity gates apply to every output not listed in C(gates.ignore), C(gates.outputs)
    sets gates per output, including the task-level agreement gates C(threshold) and C(argmax).
    An output with a non-finite value or no values fails every fidelity gate it has.
  - The speedup (reference P50 / model P50) comes with a bootstrap 95% interval over the alternating
    rounds; timed rounds continue after O(runs) while the interval is wider than O(speedup_ci_width)
    and O(speed_budget_s) lasts, and O(speedup_min) passes only when the interval's low end clears it.
  - With O(state_map) the inputs are a stream of windows (O(inputs) with a leading window axis), which
    both models run in order carrying their state; the whole sequence is compared.
  - Inputs come from O(inputs) (an C(.npz), one array per model input) or are generated from the
    input signature - seeded normal noise for float tensors, O(input_shapes) for symbolic dims,
    O(input_values) for integer and scalar inputs (a sample rate must be 16000, not random).
  - Gate limits are checked first (e.g. O(cosine_min) in [-1, 1]); the task fails when a gate fails,
    naming each gate with its value and limit, unless O(fail_on_gate=false).
version_added: "0.1.0"
author: sarai-deploy
options:
  model:
    description: The model to validate.
    type: path
    required: true
  reference:
    description: The FP32 reference model. Needed for the comparison metrics and their gates.
    type: path
  session_options:
    description:
      - onnxruntime session options, the keys SARAi's config uses - C(graph_optimization_level)
        (ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL), C(intra_op_num_threads),
        C(inter_op_num_threads), C(execution_mode) (ORT_SEQUENTIAL, ORT_PARALLEL), C(enable_cpu_mem_arena),
        C(enable_mem_pattern), C(enable_mem_reuse), C(config_entries) (session config entries),
        C(providers) (default C([CPUExecutionProvider])).
      - Used for both models.
    type: dict
  inputs:
    description:
      - An C(.npz) file with one array per model input (names and dtypes must match); other arrays in it are
        not read, and each array's header is checked against a size limit before its data is read.
      - With O(state_map), every input not in it has a leading window axis (C([windows, ...])); a state
        input's array (optional when its shape is fixed, zeros then) is its value for the first window.
      - Without it the inputs are generated and the result carries a warning (RV(input_warning)).
    type: path
  input_shapes:
    description: Input name -> full shape list, needed for inputs with symbolic dims (e.g. C(hidden_states) -> C([1, 64, 2048])).
    type: dict
  input_values:
    description: Input name -> fixed value, required for integer and scalar inputs (e.g. C(sr) -> C(16000)).
    type: dict
  seed:
    description: Seed of the generated float inputs.
    type: int
    default: 0
  warmup:
    description: Untimed runs after the first inference (at least 1).
    type: int
    default: 3
  runs:
    description: Timed runs of each model, at least 20 (more are run while the speedup's interval is wide).
    type: int
    default: 20
  speed_budget_s:
    description: Seconds the timed rounds may go on after O(runs) to narrow the speedup's interval (> 0).
    type: float
    default: 60.0
  speedup_ci_width:
    description: Width of the speedup's 95% interval, relative to the speedup, at which the timing stops (> 0).
    type: float
    default: 0.1
  state_map:
    description:
      - State input name -> the output carried into it from one window to the next (e.g. C(state) -> C(stateN)).
        Turns on sequence validation over the windows of O(inputs), which it requires.
    type: dict
  gates:
    description:
      - Gate limits as a dict (same keys as the gate options below); the options win over it.
      - C(ignore) - a list of outputs no fidelity gate applies to (e.g. a recurrent state).
      - C(outputs) - output name -> its own gates, C(cosine_min), C(mse_max), C(mae_max) and the agreement gates
        C(threshold) (C({at, agreement_min}) - the same decision value >= at) and C(argmax)
        (C({axis, agreement_min}) - the same top-1 along the axis, default -1); C(agreement_min) in [0, 1].
    type: dict
  cosine_min:
    description: Minimum cosine similarity with the reference, in [-1, 1].
    type: float
  mse_max:
    description: Maximum mean squared error against the reference (>= 0).
    type: float
  mae_max:
    description: Maximum mean absolute error against the reference (>= 0).
    type: float
  speedup_min:
    description:
      - Minimum reference P50 / model P50 (> 0), judged on the low end of its 95% interval.
        Right for INT8 (2.0), wrong for FP16 and 4-bit.
    type: float
  p50_max_ms:
    description: Maximum model P50 latency in ms (> 0).
    type: float
  p99_max_ms:
    description: Maximum model P99 latency in ms (> 0).
    type: float
  rss_max_mb:
    description: Maximum peak RSS (MiB) of the process that loaded and ran the model (> 0).
    type: float
  expected_output_shapes:
    description: Output name -> expected shape (null entries match any size).
    type: dict
  fail_on_gate:
    description: Fail the task when a gate fails. False only reports RV(failed_gates).
    type: bool
    default: true
  report:
    description: Write the full result as JSON to this path (atomically; not in check mode).
    type: path
  progress_file:
    description:
      - While it runs, keep this JSON file up to date (replaced atomically, at most about once a second)
        with C({phase, runs_done, runs_total, elapsed_s}); O(phase) is C(load), C(warmup), C(timed), then C(compare).
      - Meant for an C(async) task whose C(async_status) loop shows the operator how far it is.
        Its directory must exist. Written in check mode too (a log of the run, not a result).
    type: path
notes:
  - Read-only apart from O(report); supports check mode (measures, writes no report).
  - The measuring sessions run with C(session.intra_op.allow_spinning=0), so a model waiting for its turn
    does not take the cores from the one being timed; the service's setting is what sarai.yaml renders.
  - peak_rss_mb is the measuring child's peak resident set (Linux VmHWM) - interpreter, onnxruntime,
    model and arena; baseline_rss_mb is its resident set before loading.
seealso:
  - module: onnx_quantize
"""

EXAMPLES = r"""
- name: Validate the deployed INT8 model against FP32
  onnx_validate:
    model: /opt/sarai/models/releases/int8-0123456789ab/agi_audio_core_int8.onnx
    reference: /opt/sarai/models/releases/fp32-ba9876543210/agi_audio_core.onnx
    session_options:
      graph_optimization_level: ORT_ENABLE_EXTENDED
      intra_op_num_threads: 0
    input_shapes:
      hidden_states: [1, 64, 2048]
    cosine_min: 0.98
    mse_max: 0.01
    mae_max: 0.05
    speedup_min: 2.0
    report: /var/tmp/sarai-validate-int8.json
  register: int8_validation
"""

RETURN = r"""
metrics:
  description: Measurements of O(model).
  returned: always
  type: dict
  contains:
    load_s: {description: Seconds to create the session., type: float}
    first_inference_s: {description: Seconds of the first run after loading., type: float}
    p50_ms: {description: Median latency of the timed runs., type: float}
    p90_ms: {description: 90th percentile latency., type: float}
    p99_ms: {description: 99th percentile latency., type: float}
    mean_ms: {description: Mean latency., type: float}
    min_ms: {description: Fastest run., type: float}
    peak_rss_mb: {description: Peak RSS (MiB) of the measuring process., type: float}
    baseline_rss_mb: {description: RSS (MiB) of the measuring process before loading., type: float}
    output_shapes: {description: Output name -> shape., type: dict}
    size_bytes: {description: Size of the model files on disk., type: int}
    cosine: {description: Lowest cosine similarity of a gated output with the reference (with O(reference))., type: float}
    mse: {description: Highest mean squared error of a gated output (with O(reference))., type: float}
    mae: {description: Highest mean absolute error of a gated output (with O(reference))., type: float}
    max_abs: {description: Largest absolute error of a gated output (with O(reference))., type: float}
    nonfinite_values: {description: Non-finite values in the gated outputs of both models (with O(reference))., type: int}
    outputs: {description: "Output name -> C({cosine, mse, mae, max_abs, nonfinite_values, size}) (with O(reference)).", type: dict}
    speedup: {description: Reference P50 / model P50 (with O(reference))., type: float}
    speedup_ci95: {description: "The speedup's bootstrap 95% interval C([low, high]) (with O(reference)).", type: list}
    speedup_ci95_low: {description: Its low end, what O(speedup_min) judges (with O(reference))., type: float}
    size_ratio: {description: Model size / reference size (with O(reference))., type: float}
reference_metrics: {description: The same timings for O(reference), or null., returned: always, type: dict}
gate_results:
  description:
    - One C({gate, value, limit, passed}) per gate checked (the output-shapes gate has one per output).
    - Gates judged per output also carry C(output) (and C(reason) when a non-finite value or an empty output failed them).
  returned: always
  type: list
  elements: dict
failed_gates:
  description: One C({gate, value, limit}) per failed gate.
  returned: always
  type: list
  elements: dict
passed: {description: Whether every gate passed., returned: always, type: bool}
gates: {description: The checked gate limits., returned: always, type: dict}
inputs: {description: Input name -> shape and dtype used., returned: always, type: dict}
latency_samples_ms:
  description: Every timed run (ms) in the order measured, C(model) and C(reference) (null without O(reference)).
  returned: always
  type: dict
  sample: {model: [11.2, 11.5, 11.4], reference: [31.9, 32.4, 31.7]}
report: {description: Path of the written report, or null., returned: always, type: str}
input_warning:
  description: "With O(reference) and no O(inputs): C(generated inputs: give real inputs with `inputs` ...), else null."
  returned: always
  type: str
speed:
  description: "C({speedup, speedup_ci95, rounds, runs, ci_width, stopped}) of the timing (with O(reference)), or null."
  returned: always
  type: dict
windows: {description: Windows in the sequence (with O(state_map)), or null., returned: always, type: int}
msg: {description: "Each failed gate with value and limit (e.g. C(gate speedup_min failed: 1.12 < 2)), or a pass summary.", returned: always, type: str}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_onnx.commands import feeding_module, run_module


def main():
    run_module(feeding_module(
        AnsibleModule,
        model=dict(type="path", required=True),
        reference=dict(type="path"),
        session_options=dict(type="dict"),
        seed=dict(type="int", default=0),
        warmup=dict(type="int", default=3),
        runs=dict(type="int", default=20),
        speed_budget_s=dict(type="float", default=60.0),
        speedup_ci_width=dict(type="float", default=0.1),
        state_map=dict(type="dict"),
        gates=dict(type="dict"),
        cosine_min=dict(type="float"),
        mse_max=dict(type="float"),
        mae_max=dict(type="float"),
        speedup_min=dict(type="float"),
        p50_max_ms=dict(type="float"),
        p99_max_ms=dict(type="float"),
        rss_max_mb=dict(type="float"),
        expected_output_shapes=dict(type="dict"),
        fail_on_gate=dict(type="bool", default=True),
        report=dict(type="path"),
        progress_file=dict(type="path"),
    ), "validate")


if __name__ == "__main__":
    main()
