"""Model inputs for validation: loaded from an .npz, or generated from the input signature."""

import numpy as np

from .errors import SaraiError

_FLOAT = ("float16", "float32", "float64", "bfloat16")


def load_npz(path, signature):
    """{name: array} from an .npz holding one array per model input."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise SaraiError(f"inputs file {path} does not exist: give an .npz with one array per model input")
    except Exception as exc:
        raise SaraiError(f"inputs file {path} is not a readable .npz ({exc}); save it with numpy.savez") from None
    names = [s["name"] for s in signature]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise SaraiError(f"inputs file {path} has no array for model input(s) {', '.join(missing)} "
                         f"(it has: {', '.join(sorted(arrays)) or 'nothing'})")
    out = {}
    for spec in signature:
        arr = arrays[spec["name"]]
        if arr.dtype.name != spec["dtype"]:
            raise SaraiError(f"inputs file {path}: array {spec['name']!r} is {arr.dtype.name}, "
                             f"the model expects {spec['dtype']}; save it with that dtype")
        _check_shape(spec, list(arr.shape), f"inputs file {path}")
        out[spec["name"]] = arr
    return out


def generate_inputs(signature, input_shapes=None, input_values=None, seed=0):
    """{name: array} for a signature [{name, dtype, shape}] (shape dims: int, symbol string, None).

    Float inputs are seeded standard-normal noise. Integer, bool and scalar inputs carry meaning
    (token ids, a sample rate that must be 16000 ...), so they need a value in input_values;
    input_values also fixes any float input to a constant. Symbolic dims need input_shapes.
    """
    input_shapes, input_values = dict(input_shapes or {}), dict(input_values or {})
    names = {s["name"] for s in signature}
    for option, given in (("input_shapes", input_shapes), ("input_values", input_values)):
        unknown = sorted(set(given) - names)
        if unknown:
            raise SaraiError(f"{option} names {', '.join(unknown)}, which the model does not have "
                             f"(inputs: {', '.join(sorted(names))})")
    rng = np.random.default_rng(seed)
    out = {}
    for spec in signature:
        name, dtype = spec["name"], spec["dtype"]
        shape = _resolve_shape(spec, input_shapes.get(name))
        if name in input_values:
            try:
                out[name] = np.full(shape, input_values[name], dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise SaraiError(f"input_values[{name!r}]={input_values[name]!r} does not fit {dtype}: {exc}")
        elif dtype in _FLOAT and shape:
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            kind = "a scalar" if not shape else f"a {dtype} tensor"
            raise SaraiError(f"model input {name!r} is {kind} ({dtype}, shape {spec['shape']}): random values "
                             f"would be meaningless, give its value in input_values (e.g. {name}: 16000 "
                             "for a sample rate)")
    return out


def _resolve_shape(spec, given):
    shape = spec["shape"]
    if shape is None:
        if given is None:
            raise SaraiError(f"model input {spec['name']!r} has no declared shape: give input_shapes: "
                             f"{{{spec['name']}: [...]}}")
        shape = [None] * len(given)
    if given is None:
        symbolic = [d for d in shape if not isinstance(d, int)]
        if symbolic:
            example = [d if isinstance(d, int) else 1 for d in shape]
            raise SaraiError(f"model input {spec['name']!r} has symbolic dims {symbolic}: give input_shapes: "
                             f"{{{spec['name']}: {example}}} with the sizes to test")
        return [int(d) for d in shape]
    # Values templated by Jinja may arrive as strings.
    given = [int(d) if isinstance(d, str) and d.isdigit() else d for d in given]
    _check_shape(spec, given, "input_shapes")
    return [int(d) for d in given]


def _check_shape(spec, shape, where):
    declared = spec["shape"]
    if declared is None:
        return
    if len(shape) != len(declared) or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise SaraiError(f"{where}: shape {shape} for input {spec['name']!r} does not match its rank "
                         f"({len(declared)} dims: {declared}); give non-negative integers")
    for got, want in zip(shape, declared):
        if isinstance(want, int) and want > 0 and got != want:
            raise SaraiError(f"{where}: shape {shape} for input {spec['name']!r} conflicts with the model's "
                             f"fixed dims {declared}")
