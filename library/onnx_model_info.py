#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: onnx_model_info
short_description: Describe an ONNX model - signature, opset, parameters, files and checksums
description:
  - Reads the graph without loading weights, checks that every external data file exists and is
    long enough, and hashes each file (sha256, 1 MiB chunks).
  - With O(method), also reports which weight tensors that quantization method would rewrite.
version_added: "0.1.0"
author: sarai-deploy
options:
  path:
    description: The C(.onnx) model file.
    type: path
    required: true
  method:
    description: Report the weights this O(onnx_quantize) method would rewrite (RV(quantization_plan)).
    type: str
    choices: [none, dynamic_int8, fp16, matmul_nbits]
  options:
    description: Method options as for M(onnx_quantize) (e.g. C(nodes_to_exclude)), used with O(method).
    type: dict
  checksum:
    description: Hash every file. False skips the sha256 (sizes only) for a quick look.
    type: bool
    default: true
notes:
  - Read-only; supports check mode.
seealso:
  - module: onnx_quantize
"""

EXAMPLES = r"""
- name: Describe the FP32 source
  onnx_model_info:
    path: /srv/sarai-build/models/onnx/agi_audio_core.onnx
    method: dynamic_int8
  register: source_info

- name: Show what INT8 would quantize
  ansible.builtin.debug:
    msg: "{{ source_info.quantization_plan.byte_share * 100 }}% of weight bytes"
"""

RETURN = r"""
path: {description: Absolute model path., returned: always, type: str}
ir_version: {description: ONNX IR version., returned: always, type: int}
opset: {description: Default-domain (ai.onnx) opset version., returned: always, type: int}
opsets: {description: Opset version per domain., returned: always, type: dict}
producer_name: {description: Producer recorded in the model., returned: always, type: str}
producer_version: {description: Producer version recorded in the model., returned: always, type: str}
inputs:
  description: Graph inputs with C(name), C(dtype) (numpy name) and C(shape) (ints; symbolic dims as strings).
  returned: always
  type: list
  elements: dict
outputs: {description: Graph outputs, as RV(inputs)., returned: always, type: list, elements: dict}
nodes: {description: Node count of the main graph., returned: always, type: int}
initializers: {description: Initializer count., returned: always, type: int}
params:
  description: C(count) and C(bytes) of all stored tensors, and C(by_dtype) (tensors, count, bytes per dtype).
  returned: always
  type: dict
files:
  description: The model file and its external data files with C(name), C(size), C(sha256).
  returned: always
  type: list
  elements: dict
size_bytes: {description: Total size of the files., returned: always, type: int}
sha256: {description: sha256 over the sha256sum listing of the files (null when O(checksum=false))., returned: always, type: str}
external_data: {description: Whether weights live in external data files., returned: always, type: bool}
quantization_plan:
  description: With O(method) - weight tensors (float, rank >= 2, in initializers, Constant nodes and subgraphs)
    the method would rewrite (C(weight_tensors), C(quantized_tensors), C(weight_bytes), C(quantized_weight_bytes),
    C(byte_share), and the same per op type C(by_op) and per location C(by_location)).
  returned: when O(method) is set
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sarai_onnx.commands import run_module


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            method=dict(type="str", choices=["none", "dynamic_int8", "fp16", "matmul_nbits"]),
            options=dict(type="dict"),
            checksum=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    run_module(module, "info")


if __name__ == "__main__":
    main()
