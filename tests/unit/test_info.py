"""sarai_onnx.info: facts about a model without loading its weights."""
from __future__ import annotations

import onnx
import pytest

from sarai_onnx.errors import SaraiError
from sarai_onnx.info import model_info


def test_quick_look_skips_checksums(talker):
    info = model_info(talker, checksum=False)
    assert info["sha256"] is None and all(f["sha256"] is None for f in info["files"])
    assert info["size_bytes"] > 7_000_000 and info["ir_version"] == 8 and info["nodes"] > 50


def test_plan_follows_excluded_nodes_and_op_types(talker):
    lm_head = [n.name for n in onnx.load(talker, load_external_data=False).graph.node
               if n.op_type == "MatMul" and "lm_head.weight" in n.input]
    full = model_info(talker, method="matmul_nbits", checksum=False)["quantization_plan"]
    fewer = model_info(talker, method="matmul_nbits", options={"nodes_to_exclude": lm_head},
                       checksum=False)["quantization_plan"]
    assert fewer["quantized_tensors"] == full["quantized_tensors"] - 1
    assert fewer["quantized_weight_bytes"] == full["quantized_weight_bytes"] - 256 * 1024 * 4
    nothing = model_info(talker, method="dynamic_int8", options={"op_types_to_quantize": ["Conv"]},
                         checksum=False)["quantization_plan"]
    assert nothing["quantized_tensors"] == 0 and nothing["byte_share"] == 0.0


def test_quantized_release_reports_its_dtypes(releases):
    by_dtype = model_info(releases["dynamic_int8"]["model_path"])["params"]["by_dtype"]
    assert by_dtype["int8"]["bytes"] == 1_835_008 + 13  # 13 MatMul weights at 1 byte a value + a zero point each


def test_a_data_file_given_as_the_model_is_explained(talker):
    with pytest.raises(SaraiError, match=r"is not an ONNX model .* not its .data file"):
        model_info(talker + ".data")
