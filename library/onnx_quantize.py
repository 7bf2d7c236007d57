#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: onnx_quantize
short_description: Build a quantized (or FP32 reference) release directory from an ONNX model
description:
  - Quantizes O(src) with onnxruntime's quantization and writes the release directory O(dest)
    holding exactly C(<model_name>), C(<model_name>.data) (one external data file),
    C(quantization.json) (provenance) and C(MANIFEST.sha256) (sha256sum format, every file).
  - C(dynamic_int8) and C(fp16) run on the C(streaming) engine by default - the graph is read without
    its weights and each weight is read, converted with onnxruntime's own functions and written one
    at a time, so the build needs a fraction of the model's size in RAM. It writes the same files,
    byte for byte, as the C(onnxruntime) engine (onnxruntime's quantizers on the whole model in memory).
  - Builds in a staging directory beside O(dest), loads the result with onnxruntime, then renames it
    into place; an older O(dest) is replaced only at that last step. Any failure leaves O(dest) as it was.
  - Idempotent - when C(dest/quantization.json) records the same source sha256, method and options
    and C(dest/MANIFEST.sha256) verifies, nothing is rewritten and the result is C(ok). The engine is
    not compared - both engines build the same files.
  - With O(fidelity_target) (C(dynamic_int8) only), first searches for the options that keep the output
    within the target of the FP32 source on the validation inputs - the requested options, then
    C(per_channel), then the other weight type, then the most sensitive MatMuls kept in FP32 (ranked by
    the error INT8 adds to each one's output) - within O(search_budget). Each trial is a real build in a
    scratch directory measured with the metrics of M(onnx_validate). The release records the request
    and the search, so a second run with the same source, options, target and inputs reuses it without
    searching. When the budget is spent without meeting the target the task fails naming the best
    trial, and O(dest) is left as it was.
  - Counts weights (float tensors of rank >= 2) wherever the model holds them - initializers, C(Constant)
    nodes and subgraphs (C(If)/C(Loop)/C(Scan) bodies). Every method but C(none) first turns C(Constant)-node
    weights into initializers (same outputs) and quantizes subgraphs too (onnxruntime's C(EnableSubgraph)),
    so exported models whose weights are Constant nodes are quantized.
  - Fails, leaving O(dest) as it was, when the method rewrites less than O(min_quantized_share) of the
    weight bytes, naming the share, where the weights are (per op type; initializers, Constant nodes,
    subgraphs) and what to try; with O(allow_low_coverage=true) it builds and warns instead (an Ansible
    warning, also in C(quantization.json) C(warnings)).
  - Needs onnx, onnxruntime, onnx-ir and numpy on the target's Python.
version_added: "0.1.0"
author: sarai-deploy
options:
  src:
    description: The FP32 source model (C(.onnx)); its external data files must sit beside it.
    type: path
    required: true
  dest:
    description:
      - The release directory to write. Must not be or contain O(src).
      - An existing O(dest) must be a release (hold C(quantization.json) or C(MANIFEST.sha256)) or empty.
    type: path
    required: true
  model_name:
    description: File name of the model inside O(dest). Default is the basename of O(src).
    type: str
  method:
    description:
      - C(none) copies the model byte for byte (the FP32 reference release, same layout); when
        O(model_name) or the source's data file name differ from the layout, the weights are
        re-saved unchanged under the new names instead.
      - C(dynamic_int8) is C(onnxruntime.quantization.quantize_dynamic) (INT8 weights, dynamic activations).
      - C(fp16) is C(onnxruntime.transformers.float16.convert_float_to_float16).
      - C(matmul_nbits) is C(MatMulNBitsQuantizer) (blockwise 4- or 8-bit MatMul weights).
    type: str
    choices: [none, dynamic_int8, fp16, matmul_nbits]
    default: dynamic_int8
  weight_type:
    description: C(dynamic_int8) weight type. Default C(QInt8).
    type: str
    choices: [QInt8, QUInt8]
  per_channel:
    description: C(dynamic_int8) per-channel weight scales. Default false.
    type: bool
  reduce_range:
    description: C(dynamic_int8) 7-bit weights (for CPUs without VNNI). Default false.
    type: bool
  nodes_to_exclude:
    description: Node names to leave in float (C(dynamic_int8), C(fp16), C(matmul_nbits)).
    type: list
    elements: str
  op_types_to_quantize:
    description:
      - Op types to quantize (C(dynamic_int8), C(matmul_nbits)).
      - Default is onnxruntime's - all integer ops for C(dynamic_int8), C(MatMul) for C(matmul_nbits).
    type: list
    elements: str
  keep_io_types:
    description: C(fp16) keeps float32 model inputs and outputs (casts inside the graph). Default true.
    type: bool
  bits:
    description: C(matmul_nbits) weight bits. Default 4.
    type: int
    choices: [4, 8]
  block_size:
    description: C(matmul_nbits) quantization block size, a power of two >= 16. Default 32.
    type: int
  symmetric:
    description: C(matmul_nbits) symmetric blocks (no zero points). Default false.
    type: bool
  accuracy_level:
    description: C(matmul_nbits) accuracy level of the MatMulNBits kernel (0-4). Default unset.
    type: int
    choices: [0, 1, 2, 3, 4]
  engine:
    description:
      - Unset - C(streaming) for C(dynamic_int8), C(fp16) and C(matmul_nbits); when the model holds something
        the streaming engine does not mirror (for C(dynamic_int8) - Attention, LSTM or EmbedLayerNormalization
        nodes to quantize, subgraphs, FP16 weights, opset < 11, an already quantized model; for
        C(matmul_nbits) - subgraphs, local functions, a MatMul or Gather weight that is not float32), the
        C(onnxruntime) engine builds it and RV(engine_fallback_reason) says why. C(none) copies.
      - C(streaming) - the streaming engine or a failure naming what it does not cover (no fallback to an
        engine that needs several times more memory).
      - C(onnxruntime) - onnxruntime's quantizers on the whole model in memory (C(quantize_dynamic),
        C(convert_float_to_float16), C(MatMulNBitsQuantizer)), the reference the streaming engine is tested
        against.
    type: str
    choices: [streaming, onnxruntime]
  progress_file:
    description:
      - Keep a JSON progress document at this path while the task runs (for C(async) tasks; poll it
        with M(ansible.builtin.slurp) while M(ansible.builtin.async_status) says the job is running).
      - Written atomically on each phase change, at most about once a second while tensors are
        processed, and at the end - C({phase, tensors_done, tensors_total, bytes_done, bytes_total,
        elapsed_s, engine}), plus C(msg) when the phase is C(failed).
      - Phases - C(hash_source), C(plan), C(quantize), C(load_check), C(hash_output), then C(done) or
        C(failed). Counts are null until C(quantize) (always with the C(onnxruntime) engine).
      - Its directory must exist. Not written in check mode.
    type: path
  sweep_leftovers:
    description:
      - Before building, remove the C(.<dest name>.staging-*) and C(.<dest name>.old-*) directories beside
        O(dest) that a killed build left (about twice the model each); RV(leftovers_removed) lists them.
      - Only for a caller holding the build lock (roles/model_build under C(sarai_build_lock_file)) - a
        build of the same O(dest) running at the same time would lose its staging directory. Not in check mode.
    type: bool
    default: false
  tmp_dir:
    description:
      - Directory for temporary files. Only the C(onnxruntime) engine for C(dynamic_int8) writes some -
        onnxruntime's own FP32 copy of the model (the source size); the streaming engine writes none.
      - Default is a scratch directory beside O(dest), removed afterwards. Free space is checked first
        (output and temporary files, as each engine writes them).
      - The trials of a O(fidelity_target) search are built below it too (default beside O(dest)), one at a time.
    type: path
  fidelity_target:
    description:
      - Fidelity the release must reach against the FP32 source, judged as M(onnx_validate) judges it (the same
        code - each output on its own, non-finite values fail). Searches for the options that reach it (see description).
      - Set it tighter than the deploy gates, so small differences between the build host and the
        servers (CPU kernels) cannot fail the gates there.
      - Only with O(method=dynamic_int8). Unset, the module builds exactly the options given.
    type: dict
    suboptions:
      cosine_min: {description: Lowest cosine similarity allowed., type: float}
      mse_max: {description: Highest mean squared error allowed., type: float}
      mae_max: {description: Highest mean absolute error allowed., type: float}
      ignore:
        description: Outputs no fidelity gate applies to (e.g. a recurrent state).
        type: list
        elements: str
      outputs:
        description:
          - Output name -> its own gates (C(cosine_min), C(mse_max), C(mae_max), C(threshold), C(argmax)), as
            in M(onnx_validate)'s O(onnx_validate#module:gates).
        type: dict
  search_budget:
    description: Limits of the O(fidelity_target) search. When one is reached before the target, the task fails.
    type: dict
    suboptions:
      max_trials: {description: Builds measured at most (the first one included). Default 16., type: int}
      max_seconds:
        description: Wall time of the search; a trial that would likely end past it is not started. Default 3600.
        type: float
      min_quantized_share:
        description:
          - Share of the weight bytes that must stay quantized, in every trial (the first included) - a trial
            below it does not pass, and the search keeps no more nodes in FP32. Default 0.5.
        type: float
  min_quantized_share:
    description:
      - Lowest share of the weight bytes the release must rewrite (C(fp16) - convert), between 0 and 1.
      - Default 0.5 for C(dynamic_int8), C(fp16) and C(matmul_nbits), 0 for C(none).
      - With O(fidelity_target) it applies to the release built; the search's own floor is
        O(search_budget.min_quantized_share), applied to every trial.
    type: float
  allow_low_coverage:
    description: Build a release below O(min_quantized_share) anyway, with a warning instead of a failure.
    type: bool
    default: false
  inputs:
    description:
      - Validation inputs of the O(fidelity_target) search - an C(.npz) file with one array per model input.
      - Unset, inputs are generated as M(onnx_validate) does (seed 0) from O(input_shapes) and O(input_values);
        give the same as validation on the servers so both measure the same thing.
    type: path
  input_shapes:
    description: Input name -> full shape list for the generated search inputs (e.g. C(hidden_states) -> C([1, 64, 2048])).
    type: dict
  input_values:
    description: Input name -> fixed value for integer and scalar inputs of the search (e.g. C(sr) -> C(16000)).
    type: dict
  state_map:
    description:
      - State input -> the output carried into it; the search then judges the whole stream of windows in
        O(inputs) (a leading window axis), as M(onnx_validate) does with its O(onnx_validate#module:state_map).
    type: dict
notes:
  - Method options left unset take the method's default named in their description (shown as
    C(null) above); setting an option of another method is an error.
  - Supports check mode (reports what it would build, writes nothing) and diff mode (the manifest).
  - Output files are mode 0644 and the directory 0755, so a service user can read them.
  - Memory (peak RSS of the whole task, measured by C(make bench), see README) - the C(streaming) engine
    holds one 16 MiB chunk of one tensor at a time (about 150 MiB in all, measured on 0.4 and 1.6 GB
    models), and for C(matmul_nbits) one whole MatMul weight at a time (220 MiB, 0.14x, on 1.6 GB);
    the C(onnxruntime) engine holds copies of the model (measured on 1.6 GB - C(dynamic_int8) 3.1x its
    FP32 size, C(fp16) 1.7x, C(matmul_nbits) 1.3x).
  - The load check opens the output in onnxruntime without graph optimizations and weight pre-packing,
    so it holds no second copy of the weights; the optimized session is measured by M(onnx_validate).
seealso:
  - module: onnx_manifest
  - module: onnx_validate
"""

EXAMPLES = r"""
- name: Quantize the FP32 model to INT8
  onnx_quantize:
    src: /srv/sarai-build/models/onnx/agi_audio_core.onnx
    dest: /srv/sarai-build/out/int8
    model_name: agi_audio_core_int8.onnx
    method: dynamic_int8
    weight_type: QInt8
  register: int8_build

- name: Quantize a large model in the background and watch its progress
  onnx_quantize:
    src: /srv/sarai-build/models/onnx/agi_audio_core.onnx
    dest: /srv/sarai-build/out/int8
    progress_file: /srv/sarai-build/out/int8.progress.json
  async: 3600
  poll: 0
  register: int8_job

- name: Build the 4-bit variant, keeping the output projection in float
  onnx_quantize:
    src: /srv/sarai-build/models/onnx/agi_audio_core.onnx
    dest: /srv/sarai-build/out/int4
    model_name: agi_audio_core_int4.onnx
    method: matmul_nbits
    bits: 4
    block_size: 32
    nodes_to_exclude: [MatMul_lm_head]

- name: Quantize to INT8, keeping in FP32 what it takes to stay within the target
  onnx_quantize:
    src: /srv/sarai-build/models/onnx/agi_audio_core.onnx
    dest: /srv/sarai-build/out/int8
    model_name: agi_audio_core_int8.onnx
    method: dynamic_int8
    fidelity_target: {cosine_min: 0.99, mse_max: 0.005, mae_max: 0.04}
    search_budget: {max_trials: 12, max_seconds: 1800, min_quantized_share: 0.6}
    input_shapes:
      hidden_states: [1, 4, 2048]
  register: int8_build

- name: Show the line that pins the nodes found
  ansible.builtin.debug:
    msg: "{{ int8_build.pin_yaml }}"
"""

RETURN = r"""
dest: {description: The release directory., returned: always, type: str}
leftovers_removed:
  description: The stale staging and C(.old) directories removed beside O(dest) (O(sweep_leftovers)).
  returned: always
  type: list
  elements: str
model_path: {description: Path of the model file in O(dest)., returned: success, type: str}
data_path:
  description: Path of the external data file in O(dest); null when the release has none (every tensor inside the model file).
  returned: success
  type: str
model_name: {description: File name of the model., returned: success, type: str}
method: {description: The method used., returned: always, type: str}
options: {description: The full option set with defaults (what idempotence compares)., returned: always, type: dict}
files:
  description: The model's files in O(dest) with C(name), C(size) and C(sha256).
  returned: success
  type: list
  elements: dict
size_bytes: {description: Total size of the output model files., returned: success, type: int}
source_size_bytes: {description: Total size of the source model files., returned: success, type: int}
source_sha256: {description: sha256 over the sha256sum listing of the source files (model + data)., returned: success, type: str}
output_sha256: {description: The same over the output model files., returned: success, type: str}
ratio: {description: size_bytes / source_size_bytes., returned: success, type: float, sample: 0.2555}
coverage:
  description:
    - What was actually rewritten (quantized, or converted by C(fp16)), read from the output graph. Weights
      are the source's float tensors of rank >= 2 in initializers, Constant nodes and subgraphs.
  returned: success
  type: dict
  contains:
    weight_tensors: {description: Weights in the source., type: int}
    quantized_tensors: {description: How many of them the output no longer holds in their source dtype., type: int}
    weight_bytes: {description: Their bytes in the source (before)., type: int}
    quantized_weight_bytes: {description: Source bytes of the rewritten ones., type: int}
    weight_bytes_after: {description: Bytes the output holds for all the weights (scales and zero points included)., type: int}
    byte_share: {description: quantized_weight_bytes / weight_bytes., type: float}
    tensor_share: {description: quantized_tensors / weight_tensors., type: float}
    not_quantized: {description: Up to 20 weight names left in their source dtype., type: list}
    by_op:
      description: The same counts (weight_tensors ... weight_bytes_after) per op type the weights feed (MatMul, Conv, LSTM, ...), largest first.
      type: dict
    by_location:
      description: The same counts per place the weights are held - C(initializers), C(constant_nodes), C(subgraph_initializers), C(subgraph_constant_nodes).
      type: dict
quantize_duration_s: {description: Seconds the quantizer took when the release was built (from quantization.json)., returned: success, type: float}
engine:
  description:
    - The engine that built the release in O(dest) (C(streaming), C(onnxruntime), or C(copy) for C(none));
      from quantization.json when nothing was rebuilt. In check mode, the engine a build would use.
  returned: success
  type: str
  sample: streaming
engine_fallback_reason:
  description: Why the C(onnxruntime) engine built a release the streaming engine was meant to build; null otherwise.
  returned: success
  type: str
peak_rss_mb:
  description:
    - Peak resident memory (MiB) of the process that ran this task, load check and hashing included
      (Linux VmHWM, or the larger of it and a waited-for child's peak). When nothing was rebuilt, this
      run's peak; the build's own is C(peak_rss_mb) in quantization.json.
  returned: success
  type: float
space_needed_bytes:
  description: In check mode when a build is due, the disk space the build would write (output and temporary files).
  returned: check mode
  type: int
duration_s: {description: Seconds this task took (hashing included)., returned: success, type: float}
manifest_path: {description: Path of MANIFEST.sha256., returned: success, type: str}
manifest_sha256: {description: sha256 of the MANIFEST.sha256 bytes (the release id uses its first 12 hex digits)., returned: success, type: str}
release_sha12: {description: First 12 hex digits of manifest_sha256., returned: success, type: str}
record_path: {description: Path of quantization.json., returned: success, type: str}
planned:
  description: In check mode when a build is due, the weights the method would rewrite (the keys of coverage but weight_bytes_after and not_quantized).
  returned: check mode
  type: dict
msg: {description: Why the task changed or did not (with O(fidelity_target) - the trial chosen and the pin line)., returned: always, type: str}
excluded_nodes:
  description: With O(fidelity_target), the nodes the release keeps in FP32 (the requested ones and those the search added).
  returned: with fidelity_target, success
  type: list
  elements: str
fidelity:
  description: With O(fidelity_target), what was asked and reached.
  returned: with fidelity_target
  type: dict
  contains:
    request: {description: "Options, target, budget and inputs (shapes, sha256) of the search; the idempotence key.", type: dict}
    passed: {description: Whether a trial met the target., type: bool}
    trial: {description: Number of the trial whose options were built., type: int}
    reached: {description: "cosine, mse, mae and max_abs of that trial against FP32.", type: dict}
    quantized_share: {description: Share of the weight bytes quantized in that trial., type: float}
    search_s: {description: Seconds the search took., type: float}
    ranking:
      description: "The MatMuls ranked by sensitivity, most sensitive first (node, weight, weight_bytes, and the cosine,
        mse, mae of its INT8 output against FP32); empty when no exclusion was needed."
      type: list
      elements: dict
search:
  description:
    - With O(fidelity_target), every trial in order - C(trial), C(change) (what it changed), C(weight_type),
      C(per_channel), C(reduce_range), C(excluded_count) (nodes added to the FP32 ones), C(cosine), C(mse), C(mae),
      C(max_abs), C(quantized_share) (of the weight bytes), C(passed) and C(seconds).
    - Also returned when the task fails, to show how close the search came.
  returned: with fidelity_target
  type: list
  elements: dict
pin_yaml:
  description: The C(quantization) line for the variant catalog that rebuilds the chosen options without searching.
  returned: with fidelity_target, success
  type: str
  sample: 'quantization: {method: dynamic_int8, weight_type: "QInt8", per_channel: false, reduce_range: false, nodes_to_exclude: ["MatMul_66"]}'
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_onnx.commands import feeding_module, run_module


def main():
    run_module(feeding_module(
        AnsibleModule,
        src=dict(type="path", required=True),
        dest=dict(type="path", required=True),
        model_name=dict(type="str"),
        method=dict(type="str", default="dynamic_int8", choices=["none", "dynamic_int8", "fp16", "matmul_nbits"]),
        weight_type=dict(type="str", choices=["QInt8", "QUInt8"]),
        per_channel=dict(type="bool"),
        reduce_range=dict(type="bool"),
        nodes_to_exclude=dict(type="list", elements="str"),
        op_types_to_quantize=dict(type="list", elements="str"),
        keep_io_types=dict(type="bool"),
        bits=dict(type="int", choices=[4, 8]),
        block_size=dict(type="int"),
        symmetric=dict(type="bool"),
        accuracy_level=dict(type="int", choices=[0, 1, 2, 3, 4]),
        engine=dict(type="str", choices=["streaming", "onnxruntime"]),
        progress_file=dict(type="path"),
        tmp_dir=dict(type="path"),
        sweep_leftovers=dict(type="bool", default=False),
        fidelity_target=dict(type="dict", options=dict(cosine_min=dict(type="float"), mse_max=dict(type="float"),
                                                       mae_max=dict(type="float"),
                                                       ignore=dict(type="list", elements="str"),
                                                       outputs=dict(type="dict"))),
        state_map=dict(type="dict"),
        search_budget=dict(type="dict", options=dict(max_trials=dict(type="int"), max_seconds=dict(type="float"),
                                                     min_quantized_share=dict(type="float"))),
        min_quantized_share=dict(type="float"),
        allow_low_coverage=dict(type="bool", default=False),
    ), "quantize")


if __name__ == "__main__":
    main()
